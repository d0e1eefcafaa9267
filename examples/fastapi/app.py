"""A small FastAPI API billed in credits through the sidecar (docs/clients/python.md).

Routes: ``GET /v1/free`` (free), ``GET /v1/quote`` (1 credit, priced by the middleware's route
table), ``GET /v1/report`` (10 credits, ``RequireCredits(10)`` on the route) and
``POST /v1/generate`` (a stand-in LLM stream billed by the tokens it sent: an estimate is held
before the first byte, the counted tokens settled at the end, the hold released if the client
disconnects first).

Who pays: the ``X-API-Key`` header, looked up in ``DEMO_KEYS`` below. A real app looks the key
up in its own database (or passes ``api_key=`` to the middleware and lets the sidecar resolve
keys made with ``credit-sidecar keys create``, revocation and per-key limits included).

Settings (environment): ``SIDECAR_URL`` (default http://127.0.0.1:8080) and
``SIDECAR_SERVICE_TOKEN`` (run.sh reads it from the sidecar's ``.data/service_token``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response
from starlette.requests import HTTPConnection

from credit_sidecar import AsyncClient, CreditSidecarError
from credit_sidecar.middleware.asgi import CreditsMiddleware, RequireCredits, render
from credit_sidecar.middleware.common import no_account, refused
from credit_sidecar.models import CheckResult
from credit_sidecar.streaming import MeteredStreamingResponse

# The demo's API keys -> the account each one bills (create and fund these accounts first:
# README.md). Anything else is answered 401.
DEMO_KEYS = {"demo-key-acme": "acme", "demo-key-broke": "broke"}

ESTIMATE = 200  # tokens held before a stream starts: the most one may use
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]

credits = AsyncClient(
    os.environ.get("SIDECAR_URL", "http://127.0.0.1:8080"),
    os.environ["SIDECAR_SERVICE_TOKEN"],
)


def account_of(request: HTTPConnection) -> str | None:
    return DEMO_KEYS.get(request.headers.get("x-api-key", ""))


app = FastAPI(title="credit-sidecar FastAPI example")
app.add_middleware(
    CreditsMiddleware,
    client=credits,
    account=account_of,
    costs={"GET /v1/quote": 1},  # routes not listed are free, unless they say otherwise
    default_cost=None,
)


@app.get("/v1/free")
async def free() -> dict[str, str]:
    return {"message": "free of charge"}


@app.get("/v1/quote")
async def quote() -> dict[str, str]:
    return {"quote": "Simplicity is prerequisite for reliability."}


@app.get("/v1/report")
async def report(charge: Annotated[CheckResult, Depends(RequireCredits(10))]) -> dict[str, object]:
    return {"report": "a costly one", "balance_after": charge.balance}


async def llm(tokens: int) -> AsyncIterator[str]:
    """A stand-in for a model's token stream."""
    for i in range(tokens):
        yield WORDS[i % len(WORDS)] + " "
        await asyncio.sleep(0.01)


@app.post("/v1/generate")
async def generate(
    request: Request, tokens: Annotated[int, Query(ge=0, le=ESTIMATE)] = 20
) -> Response:
    account = account_of(request)
    if account is None:
        return render(no_account())  # 401, as the middleware answers it
    try:
        hold = await credits.hold(account, ESTIMATE)
    except CreditSidecarError as e:
        return render(refused(e))  # the sidecar's 402/429 as it answered; unreachable: 503
    return MeteredStreamingResponse(
        credits,
        hold,
        llm(tokens),
        count=lambda chunk: 1,  # one credit per token sent
        media_type="text/plain",
        headers={"X-Credits-Hold": hold.hold_id},
    )
