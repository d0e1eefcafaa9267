"""The OpenAPI 3.1 document of an :class:`~sidecar.http.contract.Api`, generated from its route
declarations alone: request bodies from their pydantic models, responses from their msgspec
Structs, the errors each route can answer from what it declares (auth, body, parameters) and
``ERROR_CODES``. Served at ``GET /openapi.json`` (sidecar/http/api.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
from pydantic.json_schema import models_json_schema

from sidecar.http.contract import Api, Operation, Out, Schema, response_types, validated

REF = "#/components/schemas/{name}"
# Documented for the routes that answer any method (the proxies' auth endpoints).
ANY_METHODS = ("get", "post", "put", "patch", "delete")
ERROR_CODES: dict[int, str] = {
    400: "`invalid_json`: the body is not JSON, or not a JSON object",
    401: "`unauthorized`: no bearer token, or not a valid one (with `WWW-Authenticate`)",
    403: "`forbidden`: a valid token of a kind this route does not accept",
    404: "`not_found`: no such route (e.g. a path parameter with a `/`)",
    405: "`method_not_allowed`: the path exists, the method does not (with `Allow`)",
    409: "`idempotency_conflict`: the id was used before with other parameters",
    413: "`request_too_large`: the body is over 64 KiB",
    422: "`invalid_request` (with the offending `field`)",
    502: "`payment_provider_error`: Stripe refused the call or could not be reached",
    503: "`store_unavailable`: Redis could not be reached",
}


def document(api: Api) -> Schema:
    """The OpenAPI document of ``api``."""
    return Spec(api).build()


def _ref(name: str) -> Schema:
    return {"$ref": REF.format(name=name)}


class Spec:
    """The OpenAPI 3.1 document of an :class:`Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api
        ops = [op for op in api.operations if op.documented]
        self.ops = ops
        models = {m for op in ops for m in (op.body,) if m is not None}
        _, defs = models_json_schema(
            [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
            ref_template=REF.replace("{name}", "{model}"),
        )
        self.components: dict[str, Schema] = dict(defs.get("$defs", {}))
        structs: list[Any] = [api.error_model]
        for op in ops:
            for o in op.responses.values():
                structs += response_types(o.model)
        found, comps = msgspec.json.schema_components(structs, ref_template=REF)
        self.struct_schema: dict[Any, Schema] = dict(zip(structs, found, strict=True))
        for name, schema in comps.items():
            if name in self.components and self.components[name] != schema:
                raise ValueError(f"two schemas named {name}")
            self.components[name] = schema

    def schema_of(self, model: Any) -> Schema:
        """A response model's schema: a union of Structs (which msgspec documents only when
        tagged) is anyOf its members."""
        members = response_types(model)
        if len(members) == 1:
            return self.struct_schema[members[0]]
        return {"anyOf": [self.struct_schema[m] for m in members]}

    def build(self) -> Schema:
        paths: dict[str, dict[str, Any]] = {}
        for op in self.ops:
            item = paths.setdefault(op.spec_path, {})
            if op.method == "*":
                for m in ANY_METHODS:
                    item[m] = self.operation(op, f"{op.operation_id}_{m}")
            else:
                item[op.method.lower()] = self.operation(op, op.operation_id)
        return {
            "openapi": "3.1.0",
            "info": self.api.info,
            "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
            "tags": [{"name": t} for t in self.api.tags],
            "paths": dict(sorted(paths.items())),
            "components": {
                "schemas": dict(sorted(self.components.items())),
                "securitySchemes": dict(self.api.security_schemes),
            },
        }

    def error(self, status: int, text: str | None) -> Schema:
        r: Schema = {
            "description": text or ERROR_CODES[status],
            "content": {"application/json": {"schema": self.schema_of(self.api.error_model)}},
        }
        if status == 401:
            r["headers"] = {
                "WWW-Authenticate": {
                    "schema": {"type": "string"},
                    "description": 'Bearer realm="credit-sidecar"',
                }
            }
        return r

    def response(self, out: Out) -> Schema:
        r: Schema = {"description": out.description}
        content: Schema = {}
        if out.model is not None:
            content["application/json"] = {"schema": self.schema_of(out.model)}
        for media, schema in (out.content or {}).items():
            content[media] = {"schema": schema}
        if content:
            r["content"] = content
        if out.headers:
            r["headers"] = {
                name: {"schema": msgspec.json.schema(h.type), "description": h.description}
                for name, h in out.headers.items()
            }
        return r

    def operation(self, op: Operation, operation_id: str) -> Schema:
        errs = dict(op.errors)
        if op.auth.bearer_errors:
            errs.setdefault(401, None)
            errs.setdefault(403, None)
        if op.body is not None:
            for status in (400, 413, 422):
                errs.setdefault(status, None)
        params = self.parameters(op)
        if op.query is not None or (op.params is not None and validated(op.params)):
            errs.setdefault(422, None)  # validated
        if op.params is not None:
            errs.setdefault(404, None)  # e.g. a value with a "/" matches no route
        responses = {str(s): self.response(o) for s, o in op.responses.items()}
        for status, text in sorted(errs.items()):
            responses.setdefault(str(status), self.error(status, text))
        out: Schema = {
            "operationId": operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "security": [{name: list(scopes) for name, scopes in alt} for alt in op.auth.security],
            "responses": dict(sorted(responses.items())),
        }
        if op.description:
            out["description"] = op.description
        if params:
            out["parameters"] = params
        if op.body is not None:
            out["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": {"schema": _ref(op.body.__name__)}},
            }
        elif op.body_schema is not None:
            out["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": {"schema": op.body_schema}},
            }
        return out

    def parameters(self, op: Operation) -> list[Schema]:
        out: list[Schema] = []
        for where, model in (("path", op.params), ("query", op.query)):
            if model is None:
                continue
            props = model.model_json_schema()["properties"]
            for name, f in model.model_fields.items():
                schema = _not_null(props[name])
                description = schema.pop("description", None) or f.description or ""
                out.append(
                    {
                        "name": name,
                        "in": where,
                        "required": where == "path",
                        "description": description,
                        "schema": schema,
                    }
                )
        for name, description in op.headers.items():
            out.append(
                {
                    "name": name,
                    "in": "header",
                    "required": False,
                    "description": description,
                    "schema": {"type": "string"},
                }
            )
        return out


def _not_null(schema: Schema) -> Schema:
    """A parameter's schema without its ``null`` (an absent parameter is the default)."""
    out = {k: v for k, v in schema.items() if k != "title"}
    branches = out.get("anyOf")
    if branches is not None:
        rest = [b for b in branches if b != {"type": "null"}]
        if len(rest) == 1:
            del out["anyOf"]
            out = {**rest[0], **out}
    if out.get("default", 0) is None:
        del out["default"]
    return out
