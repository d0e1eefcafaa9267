"""API key routes: issue a key (shown once), list an account's keys with what each spent in
its spending limit's window, change a key's spending limit, revoke a key. Admin token."""

from __future__ import annotations

from msgspec import structs

from sidecar.http.auth import ADMIN, READ
from sidecar.http.contract import Audited, Call, Out, Reply, Routes
from sidecar.http.responses import Key, KeyCreated, KeyList
from sidecar.http.schemas import (
    AccountPath,
    KeyPatch,
    KeyPath,
    KeyRequest,
)
from sidecar.http.state import API_KEYS
from sidecar.http.views import rate_limit_view, spend_limit_view, spend_view
from sidecar.ledger.apikeys import KeyInfo
from sidecar.ledger.units import iso

routes = Routes()


def key_view(k: KeyInfo) -> Key:
    return Key(
        key_id=k.key_id,
        account=k.account,
        name=k.name,
        prefix=k.prefix,
        created_at=iso(k.created_at),
        rate_limit=rate_limit_view(k.rate_limit),
        revoked_at=iso(k.revoked_at),
        spend_limit=spend_limit_view(k.spend_limit),
        spend=spend_view(k.spend),
    )


@routes.route(
    "POST",
    "/v1/accounts/{account}/keys",
    "Issue an API key (shown once)",
    tag="keys",
    auth=ADMIN,
    audit=Audited("key.create", target="key_id"),
    params=AccountPath,
    body=KeyRequest,
    responses={
        200: Out(KeyCreated, "a replay (same idempotency_key and parameters): `key` is null"),
        201: Out(KeyCreated, "the key, with its secret"),
    },
    errors={404: "`unknown_account`", 409: "`idempotency_conflict`", 503: None},
)
async def create_key(call: Call[AccountPath, None, KeyRequest]) -> Reply:
    req = call.body
    info, key = await call.app[API_KEYS].create(
        call.path.account,
        name=req.name,
        rate_limit=req.rate_limit.to_rate_limit() if req.rate_limit else None,
        spend_limit=req.spend_limit.to_spend_limit() if req.spend_limit else None,
        idempotency_key=req.idempotency_key,
    )
    replayed = key is None
    view = KeyCreated(**structs.asdict(key_view(info)), key=key, replayed=replayed)
    return Reply(view, 200 if replayed else 201)


@routes.route(
    "GET",
    "/v1/accounts/{account}/keys",
    "An account's API keys (metadata only), with what each spent in its limit's window",
    tag="keys",
    auth=READ,
    params=AccountPath,
    responses={200: Out(KeyList, "the keys")},
    errors={503: None},
)
async def list_keys(call: Call[AccountPath, None, None]) -> KeyList:
    account = call.path.account
    keys = await call.app[API_KEYS].list(account)
    return KeyList(account=account, keys=[key_view(k) for k in keys])


@routes.route(
    "PATCH",
    "/v1/keys/{key_id}",
    "Set or remove an API key's spending limit (the same window keeps what was spent)",
    tag="keys",
    auth=ADMIN,
    audit=Audited("key.patch"),
    params=KeyPath,
    body=KeyPatch,
    responses={200: Out(Key, "the key's record after the change")},
    errors={404: "`unknown_key`", 409: "`key_revoked`", 503: None},
)
async def patch_key(call: Call[KeyPath, None, KeyPatch]) -> Key:
    limit = call.body.spend_limit
    info = await call.app[API_KEYS].set_spend_limit(
        call.path.key_id, limit.to_spend_limit() if limit else None
    )
    return key_view(info)


@routes.route(
    "DELETE",
    "/v1/keys/{key_id}",
    "Revoke an API key (takes effect on the next request)",
    tag="keys",
    auth=ADMIN,
    audit=Audited("key.revoke"),
    params=KeyPath,
    responses={200: Out(Key, "the key's record, with revoked_at")},
    errors={404: "`unknown_key`", 503: None},
)
async def revoke_key(call: Call[KeyPath, None, None]) -> Key:
    return key_view(await call.app[API_KEYS].revoke(call.path.key_id))
