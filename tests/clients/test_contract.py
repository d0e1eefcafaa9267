"""The client against the sidecar's own OpenAPI document (served by the real sidecar): every
operation it calls exists with the same method and path, every body field it sends and every
result field it reads is in the operation's schemas, and every operation the spec offers service
callers is called by the client or listed in ``NOT_COVERED`` with the reason."""

from __future__ import annotations

import inspect
from typing import Any

import httpx
import pytest

from credit_sidecar import AsyncClient, Client, models
from credit_sidecar import _calls as calls
from tests.clients.conftest import Sidecar

# Fields of a result the client makes itself, or that the sidecar adds in a coming release
# (the check's rate_limit: optional until then).
CLIENT_ONLY: dict[type[models.Model], set[str]] = {models.CheckResult: {"unchecked", "rate_limit"}}


@pytest.fixture
def spec(sidecar: Sidecar) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{sidecar.url}/openapi.json").json()
    return document


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The object schemas a schema stands for (refs followed, anyOf flattened)."""
    if "$ref" in schema:
        return resolve(spec, spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]])
    if "anyOf" in schema:
        return [s for sub in schema["anyOf"] for s in resolve(spec, sub)]
    return [schema]


def operation(spec: dict[str, Any], op: str) -> dict[str, Any]:
    method, path = calls.OPERATIONS[op]
    found: dict[str, Any] = spec["paths"][path][method.lower()]
    return found


def every_call() -> list[calls.Call[Any]]:
    """A call of each operation, with every optional field given."""
    meta = {"k": "v"}
    limit = {"credits": 1, "interval": "day"}
    return [
        calls.check("a", 1, "k", True, "d", meta),
        calls.report_usage("a", 1, "k", "d", meta),
        calls.hold("a", 1, "h", 1000, "d", meta),
        calls.settle("h", 1, "a", "d"),
        calls.release("h", "a", "d"),
        calls.balance("a"),
        calls.put_account("a", {"overdraft_limit": 0}, "r"),
        calls.patch_account("a", {"spend_limit": limit}, "r"),
        calls.grant("a", 1, "g", "r", "promo", 0, 1, "d", meta),
        calls.create_key("a", "n", {"requests": 1}, limit, "k", "r"),
        calls.list_keys("a"),
        calls.patch_key("k", limit, "r"),
        calls.revoke_key("k", "r"),
        calls.put_plan("p", {"name": "n", "allowance": {"credits": 1, "interval": "day"}}, "r"),
        calls.get_plan("p"),
        calls.list_plans(),
        calls.delete_plan("p", "r"),
        calls.create_portal_session("a", "https://x.test/", "en", ["balance"]),
        calls.create_token("n", ["read"], "a", "r"),
        calls.list_tokens(),
        calls.get_token("t"),
        calls.rotate_token("t", 1, "r"),
        calls.revoke_token("t", "r"),
        calls.openapi(),
        calls.authorize("csk_x", "GET", "/x", "r", 1),
    ]


def test_every_operation_called_is_in_the_spec(spec: dict[str, Any]) -> None:
    for op, (method, path) in calls.OPERATIONS.items():
        assert path in spec["paths"], f"{op}: {path} not in the spec"
        assert method.lower() in spec["paths"][path], f"{op}: no {method} {path}"
        assert operation(spec, op)["operationId"] == op
    assert {c.op for c in every_call()} == set(calls.OPERATIONS)


def test_request_bodies_match_their_schemas(spec: dict[str, Any]) -> None:
    for call in every_call():
        op = operation(spec, call.op)
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert params == set(call.path_params), call.op
        if call.body is None:
            continue
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        (body,) = resolve(spec, schema)
        assert set(call.body) <= set(body.get("properties", {})), call.op
        assert set(body.get("required", [])) <= set(call.body), call.op


RESULTS: dict[str, type[models.Model]] = {
    "check": models.CheckResult,
    "report_usage": models.UsageRecorded,
    "hold": models.Hold,
    "settle": models.HoldClosed,
    "release": models.HoldClosed,
    "balance": models.Balance,
    "put_account": models.AccountSettings,
    "patch_account": models.AccountSettings,
    "grant": models.Granted,
    "create_key": models.KeyCreated,
    "patch_key": models.Key,
    "revoke_key": models.Key,
    "put_plan": models.Plan,
    "get_plan": models.Plan,
    "create_portal_session": models.PortalSession,
    "create_token": models.TokenCreated,
    "get_token": models.Token,
    "rotate_token": models.TokenCreated,
    "revoke_token": models.Token,
}
LISTS: dict[str, tuple[str, type[models.Model]]] = {
    "list_keys": ("keys", models.Key),
    "list_plans": ("plans", models.Plan),
    "list_tokens": ("tokens", models.Token),
}


def success_schemas(spec: dict[str, Any], op: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for status, response in operation(spec, op)["responses"].items():
        if status.startswith("2") and "content" in response:
            out += resolve(spec, response["content"]["application/json"]["schema"])
    return out


def test_result_fields_are_in_the_response_schemas(spec: dict[str, Any]) -> None:
    for op, model in RESULTS.items():
        props = {p for s in success_schemas(spec, op) for p in s.get("properties", {})}
        missing = set(model.field_names()) - props - CLIENT_ONLY.get(model, set())
        assert not missing, f"{op}: {model.__name__} reads {missing}, not in the spec"
        for name in model.SCHEMA:
            assert name in spec["components"]["schemas"], name
    # the forward auth's answer is in its headers (and its body's reason)
    allowed = operation(spec, "auth_forward_get")["responses"]["200"]
    sent = {h.lower() for h in allowed["headers"]}
    from_headers = {
        "account": "x-credits-account",
        "balance": "x-credits-balance",
        "cost": "x-credits-cost",
        "transaction_id": "x-credits-transaction",
        "replayed": "x-credits-replayed",
        "dry_run": "x-credits-dry-run",
    }
    assert set(from_headers.values()) <= sent
    (outcome,) = success_schemas(spec, "auth_forward_get")
    client_made = {"unchecked", "rate_limit_headers"}
    assert set(models.Authorized.field_names()) - set(from_headers) - client_made <= set(
        outcome["properties"]
    )
    params = {p["name"] for p in operation(spec, "auth_forward_get")["parameters"]}
    assert {"X-Forwarded-Method", "X-Forwarded-Uri"} <= params
    for op, (field, model) in LISTS.items():
        (listing,) = success_schemas(spec, op)
        (item,) = resolve(spec, listing["properties"][field]["items"])
        assert set(model.field_names()) <= set(item["properties"]), op


def test_every_service_operation_is_covered_or_listed(spec: dict[str, Any]) -> None:
    service_ops = set()
    for item in spec["paths"].values():
        for op in item.values():
            scopes = {s for sec in op.get("security", []) for v in sec.values() for s in v}
            if "service" in op.get("tags", []) or "service" in scopes:
                service_ops.add(op["operationId"])
    uncovered = service_ops - set(calls.OPERATIONS) - set(calls.NOT_COVERED)
    assert not uncovered, f"service operations neither called nor listed: {uncovered}"
    assert not set(calls.NOT_COVERED) - service_ops, "NOT_COVERED lists what the spec lacks"


def test_sync_and_async_clients_offer_the_same_calls() -> None:
    def public(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(fn).parameters)
            for name, fn in vars(cls).items()
            if not name.startswith("_") and callable(fn)
        }

    sync, asyn = public(Client), public(AsyncClient)
    sync.pop("close"), asyn.pop("aclose")
    assert sync == asyn
