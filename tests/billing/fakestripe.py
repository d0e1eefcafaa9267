"""A local fake of the few Stripe API endpoints the billing code calls, for tests.

``FakeStripe`` is an aiohttp server on 127.0.0.1 (a free port) that the official ``stripe``
library can be pointed at::

    async with FakeStripe() as fake:
        fake.add_price("price_100", 500)
        client = stripe.StripeClient(
            fake.api_key,
            base_addresses={"api": fake.url},
            http_client=stripe.AIOHTTPClient(),
            stripe_version="2024-06-20",
        )

It speaks Stripe's wire format: form-encoded request bodies with nested keys
(``line_items[0][price]=...``), a bearer API key, JSON objects shaped like Stripe's, Stripe's
error bodies (so the library raises its own ``InvalidRequestError``, ``CardError``,
``AuthenticationError``, ``APIError``, ``IdempotencyError``) and Stripe's idempotency: a POST
whose ``Idempotency-Key`` was seen before gets the first response again (same object, same
status, header ``Idempotent-Replayed: true``) without running again; the same key with another
endpoint or other parameters is a 400 ``idempotency_error``. As at Stripe, only responses of
requests that ran are kept (successes and card declines), not validation errors or injected
faults. The library sends an Idempotency-Key on every POST (its own random one if the caller
gives none) and reuses it on its retries.

Endpoints: ``POST /v1/customers``, ``GET /v1/customers/{id}``, ``POST /v1/checkout/sessions``,
``GET /v1/checkout/sessions/{id}``, ``GET /v1/checkout/sessions/{id}/line_items``,
``POST /v1/payment_intents``, ``GET /v1/payment_intents/{id}``. Top-level parameters Stripe does
not know are refused as Stripe refuses them; ``expand`` is refused (not implemented), as are
parameters the fake does not model where they would change the outcome (``price_data``, modes
other than ``payment``).

Tests control and inspect it directly: ``add_price``, ``decline`` (a payment method whose
confirmation fails like an off-session card decline), ``fail_next`` (fault injection),
``complete_session`` / ``expire_session`` (what the customer does on the hosted page), and the
``requests``, ``customers``, ``sessions`` and ``payment_intents`` records. ``sign_webhook`` and
``event`` build webhook deliveries the way Stripe signs and shapes them.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import secrets
import string
import time
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeAlias
from urllib.parse import parse_qsl

from aiohttp import web

API_VERSION = "2024-06-20"

FormValue: TypeAlias = str | list["FormValue"] | dict[str, "FormValue"]
"""A decoded form parameter: leaves stay strings (``"true"``, ``"2"``), as Stripe's wire has
them; each endpoint converts the ones it knows."""

Params: TypeAlias = dict[str, FormValue]
StripeObject: TypeAlias = dict[str, Any]

_ALNUM = string.ascii_letters + string.digits


def _new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


def _now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------------------------
# Form decoding


class FormDecodeError(ValueError):
    """A form body or query string that does not decode into nested parameters."""


_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


def _split_key(key: str) -> list[str]:
    m = _KEY.match(key)
    if m is None:
        raise FormDecodeError(f"malformed parameter name {key!r}")
    segments = [m.group(1), *_SEGMENT.findall(m.group(2))]
    if "" in segments[:-1]:
        raise FormDecodeError(f"'[]' only at the end of a parameter name: {key!r}")
    return segments


def _listify(node: Any, name: str) -> FormValue:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return list(node)
    assert isinstance(node, dict)
    if node and all(k.isdigit() for k in node):
        indices = sorted(int(k) for k in node)
        if indices != list(range(len(indices))):
            raise FormDecodeError(f"{name}: list indices must be 0..n-1, got {indices}")
        return [_listify(node[str(i)], f"{name}[{i}]") for i in indices]
    return {k: _listify(v, f"{name}[{k}]") for k, v in node.items()}


def decode_form(pairs: Iterable[tuple[str, str]]) -> Params:
    """Stripe's nested form encoding to nested dicts and lists.

    ``a[b]=1`` is ``{"a": {"b": "1"}}``; a container whose keys are all the indices 0..n-1
    (``line_items[0][price]``) becomes a list; ``expand[]=x&expand[]=y`` a list too. Values stay
    strings. Raises ``FormDecodeError`` for malformed names, a name given twice, a name that is
    both a value and a container, and gaps in list indices.
    """
    root: dict[str, Any] = {}
    for key, value in pairs:
        segments = _split_key(key)
        node: Any = root
        for i, segment in enumerate(segments[:-1]):
            is_list = i == len(segments) - 2 and segments[-1] == ""
            child = node.setdefault(segment, [] if is_list else {})
            if not isinstance(child, list if is_list else dict):
                raise FormDecodeError(f"{key!r} conflicts with another parameter")
            node = child
        leaf = segments[-1]
        if leaf == "":
            assert isinstance(node, list)
            node.append(value)
        elif leaf in node:
            raise FormDecodeError(f"{key!r} is given more than once or conflicts with another")
        else:
            node[leaf] = value
    return {k: _listify(v, k) for k, v in root.items()}


# --------------------------------------------------------------------------------------------
# Errors and parameter access


class _StripeError(Exception):
    """An error response in Stripe's shape: ``{"error": {"type", "message", ...}}``."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.error: dict[str, Any] = {"type": type_, "message": message}
        if code is not None:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.error["param"] = param
        self.error.update(extra or {})

    def body(self) -> dict[str, Any]:
        return {"error": self.error}


def _invalid(message: str, *, param: str | None = None, code: str | None = None) -> _StripeError:
    return _StripeError(400, "invalid_request_error", message, code=code, param=param)


def _missing(kind: str, id_: str, param: str, status: int = 400) -> _StripeError:
    return _StripeError(
        status,
        "invalid_request_error",
        f"No such {kind}: '{id_}'",
        code="resource_missing",
        param=param,
    )


def _required(param: str) -> _StripeError:
    return _invalid(f"Missing required param: {param}.", param=param, code="parameter_missing")


def _check_known(params: Params, known: frozenset[str], prefix: str | None = None) -> None:
    for name in params:
        if name not in known:
            full = f"{prefix}[{name}]" if prefix else name
            raise _invalid(
                f"Received unknown parameter: {full}", param=full, code="parameter_unknown"
            )


def _no_expand(params: Params) -> None:
    if params.get("expand"):
        raise _invalid("fakestripe does not implement expand", param="expand")


def _str(params: Params, name: str, *, param: str | None = None) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"Invalid string: {param or name}", param=param or name)
    return value


def _int(params: Params, name: str, *, param: str | None = None) -> int | None:
    value = _str(params, name, param=param)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise _invalid(f"Invalid integer: {value}", param=param or name) from None


def _bool(params: Params, name: str) -> bool | None:
    value = _str(params, name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise _invalid(f"Invalid boolean: {value}", param=name)
    return value == "true"


def _metadata(params: Params, name: str = "metadata") -> dict[str, str]:
    value = params.get(name, {})
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid("Invalid hash", param=name)
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise _invalid(f"Metadata values must be strings: {name}[{k}]", param=f"{name}[{k}]")
        if len(k) > 40 or len(v) > 500:
            raise _invalid(
                "Metadata keys are at most 40 characters and values at most 500",
                param=f"{name}[{k}]",
            )
        out[k] = v
    if len(out) > 50:
        raise _invalid("Metadata has at most 50 keys", param=name)
    return out


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Top-level parameters of the real endpoints (Stripe refuses others).
_CUSTOMER_CREATE = _names(
    "address balance cash_balance description email expand invoice_prefix invoice_settings "
    "metadata name next_invoice_sequence payment_method phone preferred_locales shipping "
    "source tax tax_exempt tax_id_data test_clock"
)
_SESSION_CREATE = _names(
    "adaptive_pricing after_expiration allow_promotion_codes automatic_tax "
    "billing_address_collection cancel_url client_reference_id consent_collection currency "
    "custom_fields custom_text customer customer_creation customer_email customer_update "
    "discounts expand expires_at invoice_creation line_items locale metadata mode "
    "optional_items payment_intent_data payment_method_collection "
    "payment_method_configuration payment_method_data payment_method_options "
    "payment_method_types permissions phone_number_collection redirect_on_completion "
    "return_url saved_payment_method_options setup_intent_data shipping_address_collection "
    "shipping_options submit_type subscription_data success_url tax_id_collection "
    "ui_mode"
)
_SESSION_LINE_ITEM = _names(
    "adjustable_quantity dynamic_tax_rates price price_data quantity tax_rates"
)
_SESSION_PI_DATA = _names(
    "application_fee_amount capture_method description metadata on_behalf_of receipt_email "
    "setup_future_usage shipping statement_descriptor statement_descriptor_suffix "
    "transfer_data transfer_group"
)
_PI_CREATE = _names(
    "amount application_fee_amount automatic_payment_methods capture_method confirm "
    "confirmation_method confirmation_token currency customer description "
    "error_on_requires_action expand mandate mandate_data metadata off_session on_behalf_of "
    "payment_method payment_method_configuration payment_method_data payment_method_options "
    "payment_method_types radar_options receipt_email return_url setup_future_usage shipping "
    "statement_descriptor statement_descriptor_suffix transfer_data transfer_group "
    "use_stripe_sdk"
)
_RETRIEVE = frozenset({"expand"})
_LIST = frozenset({"ending_before", "expand", "limit", "starting_after"})

# Stripe's minimum charge amounts (smallest unit) for a few currencies.
_MIN_AMOUNT = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "chf": 50, "jpy": 50}


# --------------------------------------------------------------------------------------------
# The server


class RecordedRequest(NamedTuple):
    """One request as it reached the fake (before authentication, faults and replays)."""

    method: str
    path: str
    params: Params
    idempotency_key: str | None


class _Price(NamedTuple):
    unit_amount: int
    currency: str
    description: str
    product: str


class _Decline(NamedTuple):
    code: str
    decline_code: str | None
    message: str


class _Fault(NamedTuple):
    status: int
    should_retry: bool | None


class _Stored(NamedTuple):
    method: str
    path: str
    params: Params
    status: int
    body: bytes


_Handler: TypeAlias = Callable[..., StripeObject]


class FakeStripe:
    """The fake Stripe API server; use ``async with FakeStripe() as fake`` or ``start()`` and
    ``stop()``. ``url`` is its base address while it runs.

    The stored objects (``customers``, ``sessions``, ``payment_intents``, by id) are the live
    dicts the API returns copies of; tests may read or change them.
    """

    def __init__(self, api_key: str = "sk_test_fakestripe") -> None:
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.customers: dict[str, StripeObject] = {}
        self.sessions: dict[str, StripeObject] = {}
        self.payment_intents: dict[str, StripeObject] = {}
        self.prices: dict[str, _Price] = {}
        self._line_items: dict[str, list[StripeObject]] = {}
        self._declines: dict[str, _Decline] = {}
        self._faults: deque[_Fault] = deque()
        self._idempotent: dict[str, _Stored] = {}
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._routes: list[tuple[str, re.Pattern[str], _Handler]] = [
            ("POST", re.compile(r"/v1/customers"), self._create_customer),
            ("GET", re.compile(r"/v1/customers/(?P<id>[^/]+)"), self._retrieve_customer),
            ("POST", re.compile(r"/v1/checkout/sessions"), self._create_session),
            ("GET", re.compile(r"/v1/checkout/sessions/(?P<id>[^/]+)"), self._retrieve_session),
            (
                "GET",
                re.compile(r"/v1/checkout/sessions/(?P<id>[^/]+)/line_items"),
                self._list_line_items,
            ),
            ("POST", re.compile(r"/v1/payment_intents"), self._create_payment_intent),
            (
                "GET",
                re.compile(r"/v1/payment_intents/(?P<id>[^/]+)"),
                self._retrieve_payment_intent,
            ),
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listens on 127.0.0.1, on a port the OS picks."""
        if self._runner is not None:
            raise RuntimeError("FakeStripe is already running")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self._url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner, self._url = self._runner, None, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, the ``"api"`` base address for ``StripeClient``."""
        if self._url is None:
            raise RuntimeError("FakeStripe is not running")
        return self._url

    # -- test controls -----------------------------------------------------------------------

    def add_price(
        self,
        price_id: str,
        unit_amount: int,
        currency: str = "usd",
        *,
        description: str | None = None,
    ) -> None:
        """A one-time Price that Checkout Sessions may use; ``description`` (the product's
        name, shown on line items) defaults to the price id."""
        self.prices[price_id] = _Price(
            unit_amount, currency, description or price_id, _new_id("prod_", 14)
        )

    def decline(
        self,
        payment_method: str,
        *,
        code: str = "card_declined",
        decline_code: str | None = "generic_decline",
        message: str = "Your card was declined.",
    ) -> None:
        """Confirming a PaymentIntent with ``payment_method`` fails from now on, as Stripe fails
        an off-session card decline: HTTP 402, a ``card_error`` whose ``payment_intent`` is the
        PaymentIntent, now ``requires_payment_method`` with ``last_payment_error`` set and its
        ``payment_method`` cleared (the library raises ``stripe.CardError``; the PaymentIntent
        is ``e.error.payment_intent``). For a card that needs authentication, use
        ``code="authentication_required", decline_code="authentication_required"``."""
        self._declines[payment_method] = _Decline(code, decline_code, message)

    def fail_next(self, n: int = 1, status: int = 500, *, should_retry: bool | None = None) -> None:
        """The next ``n`` API requests (whatever they are) fail with ``status`` and Stripe's
        error body (``api_error`` for 5xx; for 429 ``code: rate_limit``), without running.

        The library retries 5xx and 409 responses by itself, up to the client's
        ``max_network_retries`` (``StripeClient`` defaults to none; each retry is a new
        request here and consumes one fault, and waits 0.5 s or more first). ``should_retry``
        sends ``Stripe-Should-Retry``, which the library obeys over the status.
        """
        self._faults.extend([_Fault(status, should_retry)] * n)

    def session(self, session_id: str) -> StripeObject:
        """A copy of the stored Checkout Session."""
        return copy.deepcopy(self.sessions[session_id])

    def complete_session(
        self,
        session_id: str,
        payment_status: str = "paid",
        *,
        payment_method: str | None = None,
    ) -> StripeObject:
        """What the customer paying on the hosted page does: the session becomes ``complete``
        with ``payment_status`` (``paid``, ``unpaid`` for a delayed payment method, or
        ``no_payment_required``), its ``url`` null; its PaymentIntent ``succeeded`` (paid) or
        ``processing`` (unpaid). Returns a copy of the session, e.g. for a
        ``checkout.session.completed`` event."""
        if payment_status not in ("paid", "unpaid", "no_payment_required"):
            raise ValueError(f"no Checkout Session payment_status {payment_status!r}")
        s = self.sessions[session_id]
        if s["status"] != "open":
            raise ValueError(f"session {session_id} is {s['status']}, not open")
        s.update(status="complete", payment_status=payment_status, url=None)
        pi = self.payment_intents.get(s["payment_intent"] or "")
        if pi is not None and payment_status != "no_payment_required":
            pi["payment_method"] = payment_method or _new_id("pm_")
            if payment_status == "paid":
                pi.update(
                    status="succeeded",
                    amount_received=pi["amount"],
                    latest_charge=_new_id("ch_"),
                )
            else:
                pi["status"] = "processing"
        return self.session(session_id)

    def expire_session(self, session_id: str) -> StripeObject:
        """The session expires unpaid (``status`` ``expired``, its PaymentIntent
        ``canceled``); returns a copy, e.g. for a ``checkout.session.expired`` event."""
        s = self.sessions[session_id]
        if s["status"] != "open":
            raise ValueError(f"session {session_id} is {s['status']}, not open")
        s.update(status="expired", url=None)
        pi = self.payment_intents.get(s["payment_intent"] or "")
        if pi is not None:
            pi.update(status="canceled", cancellation_reason="abandoned", canceled_at=_now())
        return self.session(session_id)

    # -- HTTP --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        key = request.headers.get("Idempotency-Key")
        headers = {"Request-Id": _new_id("req_", 14), "Stripe-Version": API_VERSION}
        try:
            pairs = parse_qsl(request.query_string, keep_blank_values=True)
            pairs += parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
            params = decode_form(pairs)
        except (FormDecodeError, UnicodeDecodeError) as e:
            self.requests.append(RecordedRequest(request.method, request.path, {}, key))
            return self._error(_invalid(f"Invalid request body: {e}"), headers)
        self.requests.append(RecordedRequest(request.method, request.path, params, key))

        if self._faults:
            fault = self._faults.popleft()
            return self._error(_fault_error(fault), headers)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            message = (
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_"
                "SECRET_KEY')."
            )
            return self._error(_StripeError(401, "invalid_request_error", message), headers)
        if not hmac.compare_digest(auth[len("Bearer ") :], self.api_key):
            given = auth[len("Bearer ") :]
            message = f"Invalid API Key provided: {given[:8]}{'*' * max(0, len(given) - 12)}"
            return self._error(_StripeError(401, "invalid_request_error", message), headers)

        handler, args = self._route(request.method, request.path)
        if handler is None:
            message = f"Unrecognized request URL ({request.method}: {request.path})."
            return self._error(_StripeError(404, "invalid_request_error", message), headers)

        if request.method == "POST" and key:
            headers["Idempotency-Key"] = key
            if len(key) > 255:
                err = _invalid("Idempotency keys are at most 255 characters", param="key")
                return self._error(err, headers)
            stored = self._idempotent.get(key)
            if stored is not None:
                if stored.path != request.path or stored.params != params:
                    return self._error(_idempotency_mismatch(key, stored, request.path), headers)
                headers["Idempotent-Replayed"] = "true"
                return _json(stored.status, stored.body, headers)

        try:
            status, body = 200, _dumps(handler(params, **args))
        except _StripeError as e:
            status, body = e.status, _dumps(e.body())
            headers.update(e.headers)
        if request.method == "POST" and key and (status < 400 or status == 402):
            self._idempotent[key] = _Stored(request.method, request.path, params, status, body)
        return _json(status, body, headers)

    def _route(self, method: str, path: str) -> tuple[_Handler | None, dict[str, str]]:
        for route_method, pattern, handler in self._routes:
            m = pattern.fullmatch(path)
            if m is not None and route_method == method:
                return handler, m.groupdict()
        return None, {}

    @staticmethod
    def _error(err: _StripeError, headers: dict[str, str]) -> web.Response:
        return _json(err.status, _dumps(err.body()), headers | err.headers)

    # -- customers ---------------------------------------------------------------------------

    def _create_customer(self, params: Params) -> StripeObject:
        _check_known(params, _CUSTOMER_CREATE)
        _no_expand(params)
        customer: StripeObject = {
            "id": _new_id("cus_", 14),
            "object": "customer",
            "created": _now(),
            "description": _str(params, "description"),
            "email": _str(params, "email"),
            "name": _str(params, "name"),
            "phone": _str(params, "phone"),
            "livemode": False,
            "metadata": _metadata(params),
            "balance": 0,
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "invoice_settings": {"default_payment_method": None},
        }
        self.customers[customer["id"]] = customer
        return copy.deepcopy(customer)

    def _retrieve_customer(self, params: Params, id: str) -> StripeObject:
        _check_known(params, _RETRIEVE)
        _no_expand(params)
        if id not in self.customers:
            raise _missing("customer", id, "id", status=404)
        return copy.deepcopy(self.customers[id])

    def _existing_customer(self, params: Params) -> str | None:
        customer = _str(params, "customer")
        if customer is not None and customer not in self.customers:
            raise _missing("customer", customer, "customer")
        return customer

    # -- checkout sessions -------------------------------------------------------------------

    def _create_session(self, params: Params) -> StripeObject:
        _check_known(params, _SESSION_CREATE)
        _no_expand(params)
        mode = _str(params, "mode")
        if mode is None:
            raise _required("mode")
        if mode != "payment":
            raise _invalid(f"fakestripe only implements mode=payment, not {mode}", param="mode")
        customer = self._existing_customer(params)
        reference = _str(params, "client_reference_id")
        if reference is not None and not 1 <= len(reference) <= 200:
            raise _invalid(
                "client_reference_id is 1 to 200 characters", param="client_reference_id"
            )
        metadata = _metadata(params)
        pi_data = params.get("payment_intent_data", {})
        if not isinstance(pi_data, dict):
            raise _invalid("Invalid hash", param="payment_intent_data")
        _check_known(pi_data, _SESSION_PI_DATA, "payment_intent_data")
        pi_metadata = _metadata(pi_data, "metadata") if "metadata" in pi_data else {}

        raw_items = params.get("line_items")
        if raw_items is None:
            raise _required("line_items")
        if not isinstance(raw_items, list) or not raw_items:
            raise _invalid("Invalid array", param="line_items")
        if len(raw_items) > 100:
            raise _invalid("A session has at most 100 line items", param="line_items")
        created = _now()
        items: list[StripeObject] = []
        currency: str | None = None
        for i, raw in enumerate(raw_items):
            p = f"line_items[{i}]"
            if not isinstance(raw, dict):
                raise _invalid("Invalid hash", param=p)
            _check_known(raw, _SESSION_LINE_ITEM, p)
            if "price_data" in raw:
                raise _invalid("fakestripe does not implement price_data", param=f"{p}[price_data]")
            price_id = _str(raw, "price", param=f"{p}[price]")
            if price_id is None:
                raise _required(f"{p}[price]")
            price = self.prices.get(price_id)
            if price is None:
                raise _missing("price", price_id, f"{p}[price]")
            quantity = _int(raw, "quantity", param=f"{p}[quantity]")
            if quantity is None:
                raise _required(f"{p}[quantity]")
            if quantity < 1:
                raise _invalid("This value must be greater than 0.", param=f"{p}[quantity]")
            if currency is not None and price.currency != currency:
                raise _invalid(
                    "All line items of a session must have the same currency", param=f"{p}[price]"
                )
            currency = price.currency
            amount = price.unit_amount * quantity
            items.append(
                {
                    "id": _new_id("li_"),
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": price.currency,
                    "description": price.description,
                    "price": {
                        "id": price_id,
                        "object": "price",
                        "active": True,
                        "created": created,
                        "currency": price.currency,
                        "livemode": False,
                        "metadata": {},
                        "product": price.product,
                        "type": "one_time",
                        "unit_amount": price.unit_amount,
                    },
                    "quantity": quantity,
                }
            )
        amount_total = sum(item["amount_total"] for item in items)

        pi: StripeObject = {
            "id": _new_id("pi_"),
            "object": "payment_intent",
            "amount": amount_total,
            "amount_received": 0,
            "created": created,
            "currency": currency,
            "customer": customer,
            "description": _str(pi_data, "description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": pi_metadata,
            "payment_method": None,
            "setup_future_usage": _str(pi_data, "setup_future_usage"),
            "status": "requires_payment_method",
        }
        session_id = _new_id("cs_test_", 58)
        session: StripeObject = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount_total,
            "amount_total": amount_total,
            "cancel_url": _str(params, "cancel_url"),
            "client_reference_id": reference,
            "created": created,
            "currency": currency,
            "customer": customer,
            "customer_email": _str(params, "customer_email"),
            "expires_at": created + 24 * 3600,
            "livemode": False,
            "metadata": metadata,
            "mode": mode,
            "payment_intent": pi["id"],
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "status": "open",
            "success_url": _str(params, "success_url"),
            "ui_mode": "hosted",
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
        }
        self.payment_intents[pi["id"]] = pi
        self.sessions[session_id] = session
        self._line_items[session_id] = items
        return copy.deepcopy(session)

    def _retrieve_session(self, params: Params, id: str) -> StripeObject:
        _check_known(params, _RETRIEVE)
        _no_expand(params)
        if id not in self.sessions:
            raise _missing("checkout.session", id, "session", status=404)
        return self.session(id)

    def _list_line_items(self, params: Params, id: str) -> StripeObject:
        _check_known(params, _LIST)
        _no_expand(params)
        if id not in self.sessions:
            raise _missing("checkout.session", id, "session", status=404)
        items = self._line_items[id]
        limit = _int(params, "limit")
        limit = 10 if limit is None else limit
        if not 1 <= limit <= 100:
            raise _invalid("limit must be between 1 and 100", param="limit")
        after, before = _str(params, "starting_after"), _str(params, "ending_before")
        if after is not None and before is not None:
            raise _invalid(
                "You may only specify one of these parameters: ending_before, starting_after."
            )
        ids = [item["id"] for item in items]
        if after is not None:
            if after not in ids:
                raise _missing("line item", after, "starting_after")
            start = ids.index(after) + 1
            page, has_more = items[start : start + limit], start + limit < len(items)
        elif before is not None:
            if before not in ids:
                raise _missing("line item", before, "ending_before")
            end = ids.index(before)
            page, has_more = items[max(0, end - limit) : end], end - limit > 0
        else:
            page, has_more = items[:limit], limit < len(items)
        return {
            "object": "list",
            "data": copy.deepcopy(page),
            "has_more": has_more,
            "url": f"/v1/checkout/sessions/{id}/line_items",
        }

    # -- payment intents ---------------------------------------------------------------------

    def _create_payment_intent(self, params: Params) -> StripeObject:
        _check_known(params, _PI_CREATE)
        _no_expand(params)
        amount = _int(params, "amount")
        if amount is None:
            raise _required("amount")
        currency = _str(params, "currency")
        if currency is None:
            raise _required("currency")
        currency = currency.lower()
        minimum = _MIN_AMOUNT.get(currency, 1)
        if amount < minimum:
            raise _invalid(
                f"Amount must be at least {minimum} in the smallest unit of {currency}",
                param="amount",
                code="amount_too_small",
            )
        customer = self._existing_customer(params)
        payment_method = _str(params, "payment_method")
        confirm = _bool(params, "confirm") or False
        off_session = params.get("off_session")
        if off_session is not None:
            if off_session not in ("true", "false", "one_off", "recurring"):
                raise _invalid(f"Invalid off_session: {off_session}", param="off_session")
            if not confirm:
                raise _invalid(
                    "You may only specify `off_session` when `confirm` is set to true.",
                    param="off_session",
                )
        if confirm and payment_method is None:
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                param="payment_method",
                code="payment_intent_unexpected_state",
            )
        pi: StripeObject = {
            "id": _new_id("pi_"),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "created": _now(),
            "currency": currency,
            "customer": customer,
            "description": _str(params, "description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": _metadata(params),
            "payment_method": payment_method,
            "setup_future_usage": _str(params, "setup_future_usage"),
            "status": "requires_confirmation" if payment_method else "requires_payment_method",
        }
        self.payment_intents[pi["id"]] = pi
        if not confirm:
            return copy.deepcopy(pi)
        assert payment_method is not None
        charge = _new_id("ch_")
        pi["latest_charge"] = charge
        decline = self._declines.get(payment_method)
        if decline is None:
            pi.update(status="succeeded", amount_received=amount)
            return copy.deepcopy(pi)
        error: StripeObject = {
            "type": "card_error",
            "code": decline.code,
            "message": decline.message,
            "charge": charge,
            "payment_method": {"id": payment_method, "object": "payment_method", "type": "card"},
        }
        if decline.decline_code is not None:
            error["decline_code"] = decline.decline_code
        pi.update(status="requires_payment_method", payment_method=None, last_payment_error=error)
        raise _StripeError(
            402,
            "card_error",
            decline.message,
            code=decline.code,
            extra={
                key: value
                for key, value in error.items()
                if key in ("decline_code", "charge", "payment_method")
            }
            | {"payment_intent": copy.deepcopy(pi)},
        )

    def _retrieve_payment_intent(self, params: Params, id: str) -> StripeObject:
        _check_known(params, _RETRIEVE)
        _no_expand(params)
        if id not in self.payment_intents:
            raise _missing("payment_intent", id, "intent", status=404)
        return copy.deepcopy(self.payment_intents[id])


def _fault_error(fault: _Fault) -> _StripeError:
    headers = {}
    if fault.should_retry is not None:
        headers["Stripe-Should-Retry"] = "true" if fault.should_retry else "false"
    if fault.status == 429:
        return _StripeError(
            429,
            "invalid_request_error",
            "Request rate limit exceeded (injected by fakestripe).",
            code="rate_limit",
            headers=headers,
        )
    type_ = "api_error" if fault.status >= 500 else "invalid_request_error"
    message = f"Injected fault: HTTP {fault.status} (fakestripe.fail_next)."
    return _StripeError(fault.status, type_, message, headers=headers)


def _idempotency_mismatch(key: str, stored: _Stored, path: str) -> _StripeError:
    if stored.path != path:
        message = (
            "Keys for idempotent requests can only be used for the same endpoint they were first "
            f"used for ('{stored.path}' vs '{path}'). Try using a key other than '{key}' if you "
            "meant to execute a different request."
        )
    else:
        message = (
            "Keys for idempotent requests can only be used with the same parameters they were "
            f"first used with. Try using a key other than '{key}' if you meant to execute a "
            "different request."
        )
    return _StripeError(400, "idempotency_error", message)


def _dumps(obj: StripeObject) -> bytes:
    return json.dumps(obj).encode()


def _json(status: int, body: bytes, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


# --------------------------------------------------------------------------------------------
# Webhooks


def sign_webhook(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header value for ``payload``, signed as Stripe signs deliveries:
    ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<payload>" keyed with the secret>``;
    ``timestamp`` defaults to now."""
    ts = _now() if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), str(ts).encode() + b"." + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"


def event(
    type: str,
    obj: StripeObject,
    *,
    event_id: str | None = None,
    created: int | None = None,
) -> StripeObject:
    """A Stripe Event (the JSON body of a webhook delivery) about ``obj``; serialize it (e.g.
    ``json.dumps(...).encode()``) and sign those bytes with ``sign_webhook``."""
    return {
        "id": event_id or _new_id("evt_"),
        "object": "event",
        "api_version": API_VERSION,
        "created": _now() if created is None else created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }
