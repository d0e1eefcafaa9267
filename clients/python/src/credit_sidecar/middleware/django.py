"""Django: add ``credit_sidecar.middleware.django.CreditsMiddleware`` to ``MIDDLEWARE`` and
configure it in settings::

    CREDIT_SIDECAR = {
        "URL": "http://127.0.0.1:8080",
        "TOKEN": "...",                          # a service token
        "ACCOUNT": "myapp.credits.account_of",   # request -> account id or None
        # or "API_KEY": "myapp.credits.key_of",  # request -> the customer's API key
        "COSTS": {"GET /api/search": 10},        # optional route table
        "DEFAULT_COST": None,                    # routes not in the table: free
        "REQUEST_ID_HEADER": "X-Request-Id",
        "FAILURE_POLICY": "fail_closed",         # or "fail_open"
        "CLIENT": {"timeout": 2.0},              # more Client options
    }

A view's own price: ``@credits(10)`` (wins over the table). Refusals are the sidecar's JSON
body and headers; allowed responses get the header convention."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.module_loading import import_string

from credit_sidecar.client import Client
from credit_sidecar.middleware import common
from credit_sidecar.middleware.common import Verdict

F = TypeVar("F", bound=Callable[..., Any])
ATTR = "credit_sidecar_cost"


def credits(cost: int) -> Callable[[F], F]:
    """Prices a view: ``@credits(10)``."""

    def decorate(view: F) -> F:
        setattr(view, ATTR, cost)
        return view

    return decorate


class CreditsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        conf: dict[str, Any] = dict(getattr(settings, "CREDIT_SIDECAR", {}))
        # ACCOUNT: request -> account id; or API_KEY: request -> the customer's API key, which
        # the sidecar resolves (revoked keys, per-key limits)
        self.account = _callable(conf.get("ACCOUNT"))
        self.api_key = _callable(conf.get("API_KEY"))
        if (self.account is None) == (self.api_key is None):
            raise ValueError("CREDIT_SIDECAR: give one of ACCOUNT or API_KEY")
        self.costs: dict[str, int] = dict(conf.get("COSTS", {}))
        self.default_cost: int | None = conf.get("DEFAULT_COST")
        # Django's META name of the header: X-Request-Id -> HTTP_X_REQUEST_ID
        header = conf.get("REQUEST_ID_HEADER", "X-Request-Id")
        self.request_id_meta = "HTTP_" + header.upper().replace("-", "_")
        client = conf.get("CLIENT_INSTANCE")
        self.client: Client = client or Client(
            conf["URL"],
            conf["TOKEN"],
            failure_policy=conf.get("FAILURE_POLICY", "fail_closed"),
            **dict(conf.get("CLIENT", {})),
        )

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        verdict: Verdict | None = getattr(request, "credit_verdict", None)
        if verdict is not None:
            for name, value in verdict.headers.items():
                response[name] = value
        return response

    def process_view(
        self,
        request: HttpRequest,
        view: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        cost = getattr(view, ATTR, None)
        if cost is None:
            cost = common.route_cost(
                self.costs, self.default_cost, request.method or "GET", request.path
            )
        if not cost:
            return None
        request_id = request.META.get(self.request_id_meta)
        method = request.method or "GET"
        if self.api_key is not None:
            verdict = common.authorize_sync(
                self.client,
                self.api_key(request),
                cost,
                request_id,
                method,
                request.get_full_path(),
            )
        else:
            assert self.account is not None
            verdict = common.check_sync(
                self.client, self.account(request), cost, request_id, method, request.path
            )
        if not verdict.allowed:
            response = JsonResponse(verdict.body, status=verdict.status)
            for name, value in verdict.headers.items():
                response[name] = value
            return response
        request.credit_verdict = verdict  # type: ignore[attr-defined]
        return None


def _callable(value: Any) -> Callable[[HttpRequest], str | None] | None:
    if value is None:
        return None
    found: Callable[[HttpRequest], str | None] = (
        import_string(value) if isinstance(value, str) else value
    )
    return found
