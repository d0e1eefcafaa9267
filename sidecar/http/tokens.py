"""Token routes (docs/tokens.md): create a sidecar API token (shown once), list and read them,
rotate one (the replaced secret valid for a grace period), revoke one. Admin scope.

A change is answered once every serving process applies it (sidecar/ledger/token_cache.py): from
then on a revoked token is refused by all of them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from msgspec import structs

from sidecar.http.auth import ADMIN
from sidecar.http.contract import Audited, Call, Out, Reply, Routes, via_get
from sidecar.http.responses import TokenCreated, TokenList, TokenView
from sidecar.http.schemas import TokenPath, TokenRequest, TokenRotateRequest
from sidecar.http.state import TOKEN_CACHE, TOKENS
from sidecar.ledger.tokens import TokenRecord
from sidecar.ledger.units import iso

routes = Routes()
NOT_FOUND = "`unknown_token`"


def token_view(t: TokenRecord, last_used: int | None) -> TokenView:
    grace = max((p.expires for p in t.previous), default=None)
    return TokenView(
        token_id=t.id,
        name=t.name,
        scopes=sorted(t.scopes),
        account_prefix=t.account_prefix,
        created_at=iso(t.created_at),
        rotated_at=iso(t.rotated_at),
        revoked_at=iso(t.revoked_at),
        previous_valid_until=iso(grace),
        last_used_at=iso(last_used),
    )


async def applied(app: web.Application) -> None:
    """Waits until every serving process has the change (bounded: see TokenCache.applied)."""
    await app[TOKEN_CACHE].applied(await app[TOKENS].version())


@routes.route(
    "POST",
    "/v1/tokens",
    "Create a sidecar API token (shown once)",
    tag="tokens",
    auth=ADMIN,
    audit=Audited("token.create", target="token_id"),
    body=TokenRequest,
    responses={201: Out(TokenCreated, "the token, with its secret")},
    errors={503: None},
)
async def create_token(call: Call[None, None, TokenRequest]) -> Reply:
    req = call.body
    record, token = await call.app[TOKENS].create(req.name, req.scopes, req.account_prefix)
    await applied(call.app)
    view = token_view(record, None)
    return Reply(TokenCreated(**structs.asdict(view), token=token), 201)


@routes.route(
    "GET",
    "/v1/tokens",
    "Every sidecar API token (never a secret), revoked ones too",
    tag="tokens",
    auth=ADMIN,
    responses={200: Out(TokenList, "the tokens, oldest first")},
    errors={503: None},
)
async def list_tokens(call: Call[None, None, None]) -> TokenList:
    tokens = call.app[TOKENS]
    _, found = await tokens.all()
    used = await tokens.last_used()
    ordered = sorted(found.values(), key=lambda t: (t.created_at, t.id))
    return TokenList(tokens=[token_view(t, used.get(t.id)) for t in ordered])


@routes.route(
    "GET",
    "/v1/tokens/{token_id}",
    "One sidecar API token",
    tag="tokens",
    auth=ADMIN,
    params=TokenPath,
    responses={200: Out(TokenView, "the token (never its secret)")},
    errors={404: NOT_FOUND, 503: None},
)
async def get_token(call: Call[TokenPath, None, None]) -> TokenView:
    tokens = call.app[TOKENS]
    record = await tokens.get(call.path.token_id)
    return token_view(record, (await tokens.last_used()).get(record.id))


async def now_get_token(call: Call[Any, Any, Any]) -> Any:
    """What ``get_token`` answers before a change (its audit entry's ``before``)."""
    return await via_get(get_token, call)


@routes.route(
    "POST",
    "/v1/tokens/{token_id}/rotate",
    "Give a token a new secret (shown once); the one it replaces stays valid for the grace",
    tag="tokens",
    auth=ADMIN,
    audit=Audited("token.rotate", before=now_get_token),
    params=TokenPath,
    body=TokenRotateRequest,
    body_required=False,
    responses={200: Out(TokenCreated, "the token, with its new secret")},
    errors={404: NOT_FOUND, 409: "`token_revoked`", 503: None},
)
async def rotate_token(call: Call[TokenPath, None, TokenRotateRequest]) -> TokenCreated:
    grace = call.body.grace_seconds
    tokens = call.app[TOKENS]
    record, token = await tokens.rotate(call.path.token_id, grace * 1000)
    await applied(call.app)
    view = token_view(record, (await tokens.last_used()).get(record.id))
    return TokenCreated(**structs.asdict(view), token=token)


@routes.route(
    "DELETE",
    "/v1/tokens/{token_id}",
    "Revoke a token: refused by every serving process once this answers",
    tag="tokens",
    auth=ADMIN,
    audit=Audited("token.revoke", before=now_get_token),
    params=TokenPath,
    responses={200: Out(TokenView, "the token, with revoked_at")},
    errors={404: NOT_FOUND, 503: None},
)
async def revoke_token(call: Call[TokenPath, None, None]) -> TokenView:
    tokens = call.app[TOKENS]
    record = await tokens.revoke(call.path.token_id)
    await applied(call.app)
    return token_view(record, (await tokens.last_used()).get(record.id))
