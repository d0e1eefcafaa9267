"""Routes declared once. Each HTTP operation is one declaration: method, path, who may call it
(sidecar/http/auth.py), its path, query and body models (pydantic, sidecar/http/schemas.py), the
response model of each status (msgspec Structs, sidecar/http/responses.py) and its error codes.
From the declarations alone the registry

- registers the aiohttp routes, each with an endpoint built once at start-up: the auth check
  (with the app's tokens), the path, query and body validators and the encoder are resolved
  then, so a request pays for no declaration work (the hot routes, ``/v1/check`` and
  ``/auth/*``, are declared like the others and get this for free);
- validates path parameters, query parameters and the body before the handler runs (422
  naming the field; unknown query parameters are refused by name where the model forbids
  extras), and hands the handler a typed :class:`Call`;
- encodes what the handler returns (a Struct: the operation's first success status; or a
  :class:`Reply` with its status and headers), checking it is a model declared for that
  status;
- is described by one OpenAPI 3.1 document, generated from the declarations alone
  (sidecar/http/openapi.py).

Handlers return web responses of their own only for bodies that are not JSON (CSV, the
metrics, the console's page).
"""

from __future__ import annotations

import re
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast, get_args

import msgspec
from aiohttp import web
from pydantic import BaseModel, ValidationError

from sidecar import errors
from sidecar.http.auth import CALLER, PORTAL, PORTAL_SESSION, Auth, Check
from sidecar.http.errors import ENCODER, validation_error
from sidecar.http.state import AUDIT, LEDGER
from sidecar.ledger.audit import MASK, AuditEntry
from sidecar.ledger.tokens import Caller
from sidecar.runtime.logs import REQUEST_ID

P = TypeVar("P")
Q = TypeVar("Q")
B = TypeVar("B")
Schema = dict[str, Any]


@dataclass(slots=True)
class Call(Generic[P, Q, B]):
    """What a handler gets: the request, and its validated path parameters, query and body
    (``None`` where the operation declares none)."""

    request: web.Request
    path: P
    query: Q
    body: B

    @property
    def app(self) -> web.Application:
        return self.request.app


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer with a status (and headers) other than the operation's default."""

    body: msgspec.Struct
    status: int
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Header:
    type: type
    description: str


@dataclass(frozen=True)
class Out:
    """One documented answer: a JSON body of ``model`` (a Struct, or a union of Structs), or
    other media (``content``: media type -> schema) for a handler's own web response."""

    model: Any
    description: str
    headers: Mapping[str, Header] = field(default_factory=dict)
    content: Mapping[str, Schema] | None = None


@dataclass(frozen=True)
class Audited:
    """A change the audit trail records (docs/audit.md): its ``action``, and how to read the
    resource before it (``before``: e.g. the route's GET handler through :func:`via_get`). What the
    call answered is the ``after``; the account and the target (the last path parameter, else
    ``target`` of the body) are found from the request."""

    action: str
    before: Callable[[Call[Any, Any, Any]], Awaitable[Any]] | None = None
    # a field naming the thing changed: of the body (grant_id, refund_id), else of the answer
    # (the key_id or token_id a creation makes up)
    target: str | None = None
    # fields of the answer the trail never keeps (a portal session's link opens it)
    secret: tuple[str, ...] = ()


Handler = Callable[[Call[Any, Any, Any]], Awaitable[Any]]
H = TypeVar("H", bound=Handler)
Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Operation:
    """One HTTP operation, as declared. ``method`` "*" answers any method (documented as
    openapi.ANY_METHODS, operation ids suffixed with the method)."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    auth: Auth
    responses: Mapping[int, Out]
    errors: Mapping[int, str | None]
    handler: Handler
    params: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    body_schema: Schema | None = None  # a body the handler reads itself (documented only)
    headers: Mapping[str, str] = field(default_factory=dict)  # read by the handler: documented
    description: str | None = None
    body_limit: Callable[[web.Application], int] | None = None
    documented: bool = True
    # Around the whole endpoint (auth, validation, handler): what must see every request of
    # the route, refusals included (the check's metrics).
    wrap: Callable[[Endpoint], Endpoint] | None = None
    audit: Audited | None = None

    @property
    def spec_path(self) -> str:
        """The path as OpenAPI writes it: ``{tail:.*}`` -> ``{tail}``."""
        return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", self.path)

    def default_status(self) -> int:
        return min((s for s in self.responses if s < 300), default=200)


class Routes:
    """A group of declared operations (what aiohttp's RouteTableDef is for plain routes)."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        tag: str,
        auth: Auth,
        responses: Mapping[int, Out],
        errors: Mapping[int, str | None] | Iterable[int] = (),
        operation_id: str | None = None,
        params: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        body: type[BaseModel] | None = None,
        body_required: bool = True,
        body_schema: Schema | None = None,
        headers: Mapping[str, str] | None = None,
        description: str | None = None,
        body_limit: Callable[[web.Application], int] | None = None,
        documented: bool = True,
        wrap: Callable[[Endpoint], Endpoint] | None = None,
        audit: Audited | None = None,
    ) -> Callable[[H], H]:
        errs = dict(errors) if isinstance(errors, Mapping) else dict.fromkeys(errors)

        def declare(handler: H) -> H:
            self.operations.append(
                Operation(
                    method,
                    path,
                    operation_id or handler.__name__,
                    summary,
                    tag,
                    auth,
                    responses,
                    errs,
                    handler,
                    params,
                    query,
                    body,
                    body_required,
                    body_schema,
                    dict(headers or {}),
                    description,
                    body_limit,
                    documented,
                    wrap,
                    audit,
                )
            )
            return handler

        return declare


# -- validation ------------------------------------------------------------------------------


M = TypeVar("M", bound=BaseModel)


async def read_body(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    """The JSON body as ``model``: 400 for bytes that are not a JSON object, 422 naming the
    first field that is wrong. ``optional``: no body at all reads as ``{}``."""
    raw = await request.read()
    if optional and not raw:
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        if any(err["type"] == "json_invalid" for err in e.errors()):
            raise errors.InvalidJSON("request body is not valid JSON") from None
        if any(err["type"] == "model_type" and not err["loc"] for err in e.errors()):
            raise errors.InvalidJSON("request body must be a JSON object") from None
        raise validation_error(e) from None


def validated(model: type[BaseModel]) -> bool:
    """Whether some value can fail the model (not every field a plain string)."""
    props = model.model_json_schema()["properties"]
    plain = {"type": "string"}
    return any(
        {k: v for k, v in p.items() if k not in ("title", "description")} != plain
        for p in props.values()
    )


def _path_parser(model: type[M]) -> Callable[[web.Request], M]:
    if not validated(model):  # nothing to check: no work per request
        return lambda request: model.model_construct(None, **request.match_info)

    def parse(request: web.Request) -> M:
        try:
            return model.model_validate(request.match_info)
        except ValidationError as e:
            raise validation_error(e) from None

    return parse


def _query_parser(model: type[M]) -> Callable[[web.Request], M]:
    """Each parameter's only value; an empty one counts as absent (its default). A model
    that forbids extras refuses unknown parameters by name, before anything else; a
    parameter given twice is refused by name, never read as its first (or last) value."""
    names = tuple(model.model_fields)
    known = frozenset(names)
    forbid = model.model_config.get("extra") == "forbid"

    def parse(request: web.Request) -> M:
        query = request.query
        if forbid:
            for name in query:
                if name not in known:
                    raise errors.InvalidInput(f"{name}: unknown query parameter", field=name)
        if len(query) != len(set(query)):
            for name in query:
                if len(query.getall(name)) > 1:
                    raise errors.InvalidInput(f"{name}: given more than once", field=name)
        data = {name: value for name in names if (value := query.get(name))}
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise validation_error(e) from None

    return parse


def response_types(model: Any) -> tuple[type, ...]:
    """The Structs a response model stands for: a union's members, or the model itself."""
    if isinstance(model, types.UnionType):
        return get_args(model)
    return (model,) if isinstance(model, type) else ()


def account_reader(op: Operation) -> Callable[[Call[Any, Any, Any]], str | None]:
    """How to find the one account a request of ``op`` is about: the ``account`` of its path
    parameters or of its body, as validated (decoded, checked against the id pattern); None
    for a route about no single account. A portal route's is always its session's."""
    if op.auth is PORTAL_SESSION:
        return lambda call: call.request[PORTAL].account
    if op.params is not None and "account" in op.params.model_fields:
        return lambda call: cast(str, call.path.account)
    if op.body is not None and "account" in op.body.model_fields:
        return lambda call: cast(str, call.body.account)
    return lambda call: None


def confine(caller: Caller, account: str | None, op: Operation) -> None:
    """403 unless a token limited to an account prefix calls about an account within it."""
    prefix = caller.account_prefix
    if account is None:
        raise errors.Forbidden(
            f"token {caller.token_id} is limited to accounts starting with {prefix!r}; "
            f"{op.method} {op.spec_path} is not about one account"
        )
    if not caller.may_touch(account):
        raise errors.Forbidden(
            f"token {caller.token_id} is limited to accounts starting with {prefix!r}",
            field="account",
        )


REASON_HEADER = "X-Audit-Reason"
MAX_REASON = 500


def reason_of(call: Call[Any, Any, Any]) -> str | None:
    """Why the change is made: the body's ``reason`` where the body gives one (grants, refunds:
    their models require it where docs/audit.md says so), else the X-Audit-Reason header (a
    purchase grant's too)."""
    if call.body is not None and getattr(call.body, "reason", None) is not None:
        return cast(str, call.body.reason)
    values = call.request.headers.getall(REASON_HEADER, [])
    if not values:
        return None
    if len(values) > 1:  # which one is the reason? (as a query parameter given twice)
        raise errors.InvalidInput(f"{REASON_HEADER}: given more than once", field=REASON_HEADER)
    given = values[0]
    if not 0 < len(given) <= MAX_REASON or not given.isprintable():
        raise errors.InvalidInput(
            f"{REASON_HEADER} must be 1-{MAX_REASON} printable characters", field=REASON_HEADER
        )
    return given


async def via_get(handler: Handler, call: Call[Any, Any, Any]) -> Any:
    """What ``handler`` (a GET of the same path) answers now, as plain data; None if the thing
    does not exist (yet)."""
    try:
        found = await handler(Call(call.request, call.path, None, None))
    except errors.SidecarError:
        return None
    return msgspec.to_builtins(found)


async def record(
    call: Call[Any, Any, Any],
    audited: Audited,
    account: str | None,
    reason: str | None,
    before: Any,
    result: Any,
) -> None:
    """Appends the audit entry of a change just answered (docs/audit.md)."""
    app, request = call.app, call.request
    caller = request.get(CALLER)
    after = msgspec.to_builtins(result) if result is not None else None
    if audited.secret and isinstance(after, dict):
        after = {k: MASK if k in audited.secret else v for k, v in after.items()}
    target: str | None = None
    if audited.target is not None:
        target = getattr(call.body, audited.target, None) if call.body is not None else None
        if target is None and isinstance(after, dict):
            target = after.get(audited.target)
    elif call.path is not None:
        values = [v for k, v in call.path.model_dump().items() if k != "account"]
        target = str(values[-1]) if values else None
    if target is None and isinstance(after, dict):
        # a creation names what it made in its answer (a token's or a key's new id)
        target = next((str(after[k]) for k in ("token_id", "key_id") if after.get(k)), None)
    if account is None and isinstance(after, dict) and isinstance(after.get("account"), str):
        account = after["account"]  # a key changed by its id: the account it belongs to
    entry = AuditEntry(
        at=app[LEDGER].clock(),
        token_id=caller.token_id if caller is not None else "",
        token_name=caller.name if caller is not None else "",
        request_id=REQUEST_ID.get() or "",
        action=audited.action,
        account=account,
        target=target,
        reason=reason,
        before=before,
        after=after,
        replayed=bool(isinstance(after, dict) and after.get("replayed")),
    )
    await app[AUDIT].append(entry)


def endpoint(op: Operation, app: web.Application) -> Endpoint:
    """The aiohttp handler of ``op`` in ``app``: everything the declaration decides is
    resolved here, once."""
    check: Check | None = op.auth.resolve(app)
    path = _path_parser(op.params) if op.params is not None else None
    query = _query_parser(op.query) if op.query is not None else None
    body = op.body
    fn = op.handler
    default = op.default_status()
    declared = {s: response_types(o.model) for s, o in op.responses.items() if o.model is not None}
    encode = ENCODER.encode

    account_of = account_reader(op)
    optional = not op.body_required
    audited = op.audit
    # An answer to a cookie, unlike one to an Authorization header, is one a shared cache may
    # keep (RFC 9111 3.5), and a browser keeps on disk: a portal session's are never stored.
    private = op.auth is PORTAL_SESSION

    async def answer(request: web.Request) -> web.StreamResponse:
        if check is not None and (pending := check(request)) is not None:
            await pending
        call = Call(
            request,
            path(request) if path is not None else None,
            query(request) if query is not None else None,
            await read_body(request, body, optional=optional) if body is not None else None,
        )
        caller = request.get(CALLER)
        if caller is not None and caller.account_prefix is not None:
            confine(caller, account_of(call), op)
        if audited is not None:
            # a customer's words have no place in the operator's trail
            reason = reason_of(call) if op.auth is not PORTAL_SESSION else None
            before = await audited.before(call) if audited.before is not None else None
        result = await fn(call)
        if isinstance(result, web.StreamResponse):
            if audited is not None and result.status < 300:
                await record(call, audited, account_of(call), reason, before, None)
            return result
        status, headers = default, None
        if type(result) is Reply:
            reply: Reply = result
            result, status, headers = reply.body, reply.status, reply.headers
        if audited is not None and status < 300:
            await record(call, audited, account_of(call), reason, before, result)
        if not isinstance(result, declared.get(status, ())):
            raise TypeError(
                f"{op.operation_id}: {type(result).__name__} is not declared for {status}"
            )
        return web.Response(
            body=encode(result), status=status, headers=headers, content_type="application/json"
        )

    handle: Endpoint = answer
    if private:  # (only these: every other route, the check's included, pays no extra layer)

        async def handle_private(request: web.Request) -> web.StreamResponse:
            response = await answer(request)
            if not response.prepared:
                response.headers["Cache-Control"] = "no-store"
            return response

        handle = handle_private
    result = op.wrap(handle) if op.wrap is not None else handle
    if op.body_limit is not None:
        result.body_limit = op.body_limit  # type: ignore[attr-defined]  # read by body_first
    return result


# -- the registry -----------------------------------------------------------------------------


class Api:
    """Route groups put together: registered on an app, described by one OpenAPI document."""

    def __init__(
        self,
        groups: Sequence[Routes],
        *,
        info: Schema,
        tags: Sequence[str],
        security_schemes: Mapping[str, Schema],
        error_model: type[msgspec.Struct],
    ) -> None:
        self.groups = groups
        self.info, self.tags = info, tags
        self.security_schemes, self.error_model = security_schemes, error_model

    @property
    def operations(self) -> list[Operation]:
        ops = [op for g in self.groups for op in g.operations]
        seen: set[tuple[str, str]] = set()
        for op in ops:
            key = (op.method, op.path)
            assert key not in seen, f"{op.method} {op.path} declared twice"
            seen.add(key)
        return ops

    def install(self, app: web.Application) -> None:
        for op in self.operations:
            app.router.add_route(op.method, op.path, endpoint(op, app))
