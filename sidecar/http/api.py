"""The HTTP API as one registry (sidecar/http/contract.py): every route group of the app, the
OpenAPI document generated from their declarations (sidecar/http/openapi.py; served at
``GET /openapi.json``, no token), and :func:`install`, which registers them all on an app.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import orjson
from aiohttp import web

from sidecar import __version__
from sidecar.http import (
    accounts,
    admin,
    audit,
    billing,
    console,
    health,
    keys,
    ops,
    plans,
    portal_api,
    portal_billing,
    portal_pages,
    portal_sessions,
    proxy,
    routes,
    stripe_events,
    tokens,
    webui,
)
from sidecar.http.auth import NONE, SECURITY_SCHEMES
from sidecar.http.contract import Api, Call, Out, Routes
from sidecar.http.openapi import document
from sidecar.http.responses import Error

meta = Routes()

API = Api(
    [
        meta,
        health.health_routes,
        console.console_routes,
        webui.webui_routes,
        portal_pages.portal_page_routes,
        routes.routes,
        accounts.routes,
        keys.routes,
        plans.routes,
        tokens.routes,
        portal_sessions.routes,
        portal_api.routes,
        portal_billing.routes,
        admin.admin_routes,
        ops.ops_routes,
        audit.routes,
        billing.billing_routes,
        stripe_events.stripe_routes,
        proxy.proxy_routes,
    ],
    info={
        "title": "credit-sidecar",
        "version": __version__,
        "description": "Prepaid API credits enforced on every request by an atomic Redis "
        'ledger. Errors are `{"error": {"code", "message", "field"?}}`; integers must be '
        "JSON integers; a rejected request changes nothing.",
        "license": {"name": "MIT", "identifier": "MIT"},
    },
    tags=(
        "checks",
        "accounts",
        "holds",
        "keys",
        "plans",
        "tokens",
        "portal",
        "reads",
        "billing",
        "operations",
        "proxy",
        "service",
    ),
    security_schemes=SECURITY_SCHEMES,
    error_model=Error,
)


@functools.cache
def _spec() -> dict[str, Any]:
    return document(API)


def build_spec() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_spec())


@functools.cache
def _spec_json() -> bytes:
    return orjson.dumps(_spec())


@meta.route(
    "GET",
    "/openapi.json",
    "This document",
    tag="service",
    auth=NONE,
    responses={
        200: Out(
            None,
            "the OpenAPI 3.1 description of the API",
            content={"application/json": {"type": "object", "additionalProperties": True}},
        )
    },
)
async def openapi(call: Call[None, None, None]) -> web.Response:
    return web.Response(body=_spec_json(), content_type="application/json")


def install(app: web.Application) -> None:
    """Registers every declared route on ``app`` (its tokens and settings set already)."""
    API.install(app)
