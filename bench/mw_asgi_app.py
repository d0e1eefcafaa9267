"""The route bench/middleware.py measures, as a Starlette app under uvicorn: ``GET /v1/thing``
(a small JSON answer) and ``/healthz``; with ``--sidecar URL`` the route costs 1 credit through
the Python client's ``CreditsMiddleware`` (the account from the ``X-Account`` header)."""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from credit_sidecar import AsyncClient
from credit_sidecar.middleware.asgi import CreditsMiddleware


async def thing(request: Request) -> JSONResponse:
    return JSONResponse({"thing": 42})


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def account(conn: HTTPConnection) -> str | None:
    return conn.headers.get("x-account")


def app(sidecar: str | None, token: str) -> Starlette:
    web = Starlette(routes=[Route("/v1/thing", thing), Route("/healthz", healthz)])
    if sidecar:
        web.add_middleware(
            CreditsMiddleware,
            client=AsyncClient(sidecar, token),  # the client as shipped: its default pool
            account=account,
            costs={"GET /v1/thing": 1},
        )
    return web


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sidecar", default=None)
    p.add_argument("--token", default="")
    a = p.parse_args()
    uvicorn.run(
        app(a.sidecar, a.token),
        host="127.0.0.1",
        port=a.port,
        loop="uvloop",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
