"""The OpenAPI document (sidecar/http/openapi.py) against the app: every route the app serves is
described and nothing else is, each request body is the current schema of the pydantic model
its handler validates with, the document is valid OpenAPI 3.1, and it is served without a token.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from pydantic import BaseModel

from sidecar.http import schemas
from sidecar.http.api import build_spec
from sidecar.http.app import create_app
from sidecar.http.contract import ANY_METHODS
from sidecar.http.openapi import REF, REQUEST_MODELS
from sidecar.settings import Settings

Client = TestClient[web.Request, web.Application]
HTTP_DIR = Path(schemas.__file__).parent
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Static files of the console: the page itself (/console) is described, its assets are not.
UNDESCRIBED_PREFIXES = ("/console/",)


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
        if path.startswith(UNDESCRIBED_PREFIXES) or (r.method == "HEAD" and path in gets):
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
                probe = path in ("/readyz", "/healthz")  # a probe answers with its own body
                if int(status) >= 400 and int(status) not in (402, 429) and not probe:
                    schema = response["content"]["application/json"]["schema"]
                    denial = path.startswith("/auth/") and status != "404"  # a gate's answer
                    body = "AuthOutcome" if denial else "Error"
                    assert schema == {"$ref": REF.format(model=body)}, (method, path, status)
            if op["security"] and path.startswith("/v1/"):
                assert {"401", "403"} <= set(op["responses"]), (method, path)
    assert len(ids) == len(set(ids)), "duplicate operationIds"


def test_request_body_schemas_are_the_models_current_schemas() -> None:
    components = build_spec()["components"]["schemas"]
    for model in REQUEST_MODELS:
        own = model.model_json_schema(ref_template=REF)
        nested = own.pop("$defs", {})
        assert components[model.__name__] == own, model.__name__
        for name, schema in nested.items():
            assert components[name] == schema, f"{name} (in {model.__name__})"


def test_every_request_model_is_documented() -> None:
    models = {
        obj
        for obj in vars(schemas).values()
        if isinstance(obj, type) and issubclass(obj, schemas.Body) and obj is not schemas.Body
    }
    components = build_spec()["components"]["schemas"]
    assert {m.__name__ for m in models} <= set(components)


def handler_bodies() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> the model its handler reads the body with (``body(request, Model)``),
    read from the handlers' source in sidecar/http/."""
    out: dict[tuple[str, str], str] = {}
    for source in sorted(HTTP_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.AsyncFunctionDef):
                continue
            route = None
            for dec in node.decorator_list:
                if (
                    isinstance(dec, ast.Call)
                    and isinstance(dec.func, ast.Attribute)
                    and dec.func.attr in METHODS
                    and dec.args
                    and isinstance(dec.args[0], ast.Constant)
                ):
                    route = (dec.func.attr.upper(), str(dec.args[0].value))
            if route is None:
                continue
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name)
                    and call.func.id == "body"
                    and len(call.args) == 2
                    and isinstance(call.args[1], ast.Name)
                ):
                    out[route] = call.args[1].id
    return out


def test_each_operation_documents_the_model_its_handler_validates() -> None:
    spec = build_spec()
    bodies = handler_bodies()
    assert len(bodies) >= len(REQUEST_MODELS) - 2  # the parser found the handlers
    for (method, path), model in bodies.items():
        op = spec["paths"][path][method.lower()]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": REF.format(model=model)}, (method, path)
        assert op["requestBody"]["required"] is True
        assert isinstance(getattr(schemas, model), type)
        assert issubclass(getattr(schemas, model), BaseModel)


async def test_the_document_is_served_without_a_token(client: Client) -> None:
    r = await client.get("/openapi.json")
    assert r.status == 200
    assert r.content_type == "application/json"
    assert orjson.loads(await r.read()) == orjson.loads(orjson.dumps(build_spec()))
