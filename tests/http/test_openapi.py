"""The OpenAPI document, generated from the route declarations (sidecar/http/contract.py),
against the app: every route the app serves is described and nothing else is, each request body
is the current schema of the pydantic model the registry validates it with, the document is
valid OpenAPI 3.1, it is served without a token; and the registry answers only with the
models a route declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from sidecar.http import schemas
from sidecar.http.api import API, build_spec
from sidecar.http.app import create_app
from sidecar.http.auth import NONE
from sidecar.http.contract import Call, Out, Routes, endpoint
from sidecar.http.openapi import ANY_METHODS, REF
from sidecar.http.responses import Health
from sidecar.settings import Settings

Client = TestClient[web.Request, web.Application]
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Static files of the console and the portal: the pages themselves (/console, /portal/) are
# described, their assets, the design system they share (/ui/) and the redirect are not.
UNDESCRIBED_PREFIXES = ("/console/", "/ui/")
UNDESCRIBED = {"/portal", "/portal/{name}"}

pytestmark = pytest.mark.sql_free  # (its writer is off: SQL is never reached)


def served(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route, as the spec names them: the HEAD routes aiohttp
    adds beside each GET are left out, and a route for any method ("*") stands for the
    methods the spec documents for such routes."""
    routes = list(app.router.routes())
    gets = {r.resource.canonical for r in routes if r.method == "GET" and r.resource}
    out: set[tuple[str, str]] = set()
    for r in routes:
        assert r.resource is not None
        path = r.resource.canonical
        if (
            path.startswith(UNDESCRIBED_PREFIXES)
            or path in UNDESCRIBED
            or (r.method == "HEAD" and path in gets)
        ):
            continue
        methods = [m.upper() for m in ANY_METHODS] if r.method == "*" else [r.method]
        out |= {(m, path) for m in methods}
    return out


def described(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }


def differences(served: set[tuple[str, str]], described: set[tuple[str, str]]) -> str:
    lines = [f"  served, not in the spec: {m} {p}" for m, p in sorted(served - described)]
    lines += [f"  in the spec, not served: {m} {p}" for m, p in sorted(described - served)]
    return "\n".join(lines)


def test_every_served_route_is_described_and_every_described_route_is_served(
    settings: Settings,
) -> None:
    app = create_app(settings)
    have, spec = served(app), described(build_spec())
    assert have == spec, "the OpenAPI spec and the app's routes differ:\n" + differences(have, spec)


def test_the_document_is_valid_openapi_3_1() -> None:
    spec = build_spec()
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # openapi-spec-validator: the OpenAPI 3.1 meta-schema and its rules


def refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def test_every_reference_resolves_and_every_component_is_used() -> None:
    spec = build_spec()
    components = spec["components"]["schemas"]
    used = set(refs(spec["paths"]))
    seen: set[str] = set()
    while used - seen:  # follow references between components too
        name = (used - seen).pop()
        seen.add(name)
        assert name.startswith("#/components/schemas/"), name
        target = name.removeprefix("#/components/schemas/")
        assert target in components, f"{name} does not resolve"
        used |= set(refs(components[target]))
    unused = set(components) - {r.removeprefix("#/components/schemas/") for r in seen}
    assert not unused, f"components nothing refers to: {sorted(unused)}"


def test_operations_have_unique_ids_known_security_and_declared_path_parameters() -> None:
    spec = build_spec()
    schemes = set(spec["components"]["securitySchemes"])
    ids: list[str] = []
    for path, item in spec["paths"].items():
        template_params = {p.strip("{}") for p in path.split("/") if p.startswith("{")}
        for method, op in item.items():
            ids.append(op["operationId"])
            assert op["summary"] and op["responses"], (method, path)
            for requirement in op["security"]:
                assert set(requirement) <= schemes, (method, path, requirement)
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == template_params, (method, path)
            for status, response in op["responses"].items():
                assert response["description"], (method, path, status)
                # Errors have the one body (402 and 429 of a check are its answers).
                # a probe answers with its own body, a portal link opened in a browser a page
                probe = path in ("/readyz", "/healthz", "/portal/s/{link}")
                if int(status) >= 400 and int(status) not in (402, 429) and not probe:
                    schema = response["content"]["application/json"]["schema"]
                    denial = path.startswith("/auth/") and status != "404"  # a gate's answer
                    body = "AuthOutcome" if denial else "Error"
                    assert schema == {"$ref": REF.format(name=body)}, (method, path, status)
            if op["security"] and path.startswith("/v1/portal/"):  # a session, no token
                wanted = {"401"} if method == "get" else {"401", "403"}  # 403: the CSRF check
                assert wanted <= set(op["responses"]), (method, path)
            elif op["security"] and path.startswith("/v1/"):
                assert {"401", "403"} <= set(op["responses"]), (method, path)
    assert len(ids) == len(set(ids)), "duplicate operationIds"


def test_request_body_schemas_are_the_models_current_schemas() -> None:
    spec = build_spec()
    components = spec["components"]["schemas"]
    bodies = [op for op in API.operations if op.body is not None]
    assert len(bodies) >= 8
    for op in bodies:
        assert op.body is not None
        documented = spec["paths"][op.spec_path][op.method.lower()]["requestBody"]
        assert documented["content"]["application/json"]["schema"] == {
            "$ref": REF.format(name=op.body.__name__)
        }, op.operation_id
        assert documented["required"] is op.body_required
        own = op.body.model_json_schema(ref_template=REF.replace("{name}", "{model}"))
        nested = own.pop("$defs", {})
        assert components[op.body.__name__] == own, op.body.__name__
        for name, schema in nested.items():
            assert components[name] == schema, f"{name} (in {op.body.__name__})"


def test_every_request_model_is_documented() -> None:
    models = {
        obj
        for obj in vars(schemas).values()
        if isinstance(obj, type) and issubclass(obj, schemas.Body) and obj is not schemas.Body
    }
    components = build_spec()["components"]["schemas"]
    assert {m.__name__ for m in models} <= set(components)


def test_query_and_path_parameters_are_their_models_fields() -> None:
    spec = build_spec()
    for op in API.operations:
        if not op.documented:
            continue
        documented = spec["paths"][op.spec_path][
            op.method.lower() if op.method != "*" else ANY_METHODS[0]
        ].get("parameters", [])
        for where, model in (("path", op.params), ("query", op.query)):
            names = [p["name"] for p in documented if p["in"] == where]
            assert names == (list(model.model_fields) if model else []), (op.operation_id, where)


async def test_a_handler_answering_with_an_undeclared_model_is_a_500_not_a_silent_change(
    settings: Settings,
) -> None:
    """The registry checks what a handler returns against the route's declared models."""
    group = Routes()

    @group.route("GET", "/x", "x", tag="service", auth=NONE, responses={200: Out(Health, "ok")})
    async def wrong(call: Call[None, None, None]) -> Any:
        return {"status": "ok", "pid": 1}  # a dict, not the declared Health

    (op,) = group.operations
    app = create_app(settings)
    app.router.add_route("GET", "/x", endpoint(op, app))
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/x")
        assert r.status == 500
        assert (await r.json())["error"]["code"] == "internal_error"


async def test_the_document_is_served_without_a_token(client: Client) -> None:
    r = await client.get("/openapi.json")
    assert r.status == 200
    assert r.content_type == "application/json"
    assert orjson.loads(await r.read()) == orjson.loads(orjson.dumps(build_spec()))
