"""Flask: ``FlaskCredits(app, client=Client(...), account=fn, costs={...})`` checks the routes
of its table before their view; ``@require_credits(10)`` prices one view. Refusals are the
sidecar's JSON body and headers; allowed responses get the header convention."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Flask, Request, Response, current_app, g, jsonify, request

from credit_sidecar.client import Client
from credit_sidecar.middleware import common
from credit_sidecar.middleware.common import Verdict

F = TypeVar("F", bound=Callable[..., Any])
EXTENSION = "credit_sidecar"


class FlaskCredits:
    def __init__(
        self,
        app: Flask | None = None,
        *,
        client: Client,
        account: Callable[[Request], str | None] | None = None,
        api_key: Callable[[Request], str | None] | None = None,
        costs: Mapping[str, int] | None = None,
        default_cost: int | None = None,
        request_id_header: str = "X-Request-Id",
    ) -> None:
        if (account is None) == (api_key is None):
            raise ValueError("give one of account= or api_key=")
        self.client = client
        self.account = account
        self.api_key = api_key
        self.costs = dict(costs or {})
        self.default_cost = default_cost
        self.request_id_header = request_id_header
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.extensions[EXTENSION] = self
        app.before_request(self._before)
        app.after_request(self._after)

    def check(self, cost: int) -> Verdict:
        request_id = request.headers.get(self.request_id_header)
        g.credit_checks = g.get("credit_checks", 0) + 1  # the table's and a view's own
        if self.api_key is not None:
            uri = request.full_path if request.query_string else request.path
            return common.authorize_sync(
                self.client,
                self.api_key(request),
                cost,
                request_id,
                request.method,
                uri,
                g.credit_checks - 1,
            )
        assert self.account is not None
        return common.check_sync(
            self.client,
            self.account(request),
            cost,
            request_id,
            request.method,
            request.path,
            g.credit_checks - 1,
        )

    def _before(self) -> Response | None:
        cost = common.route_cost(self.costs, self.default_cost, request.method, request.path)
        if not cost:
            return None
        return _gate(self.check(cost))

    @staticmethod
    def _after(response: Response) -> Response:
        for verdict in g.get("credit_verdicts", []):
            response.headers.update(verdict.headers)
        return response


def render(verdict: Verdict) -> Response:
    response = jsonify(verdict.body)
    response.status_code = verdict.status
    response.headers.update(verdict.headers)
    return response


def _gate(verdict: Verdict) -> Response | None:
    if not verdict.allowed:
        return render(verdict)
    g.setdefault("credit_verdicts", []).append(verdict)
    g.credit_check = verdict.result
    return None


def require_credits(cost: int) -> Callable[[F], F]:
    """Charges ``cost`` before the view runs (the app's FlaskCredits gives the client and the
    account); ``g.credit_check`` is the check's result."""

    def decorate(view: F) -> F:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            credits = current_app.extensions.get(EXTENSION)
            if credits is None:
                raise RuntimeError("require_credits needs FlaskCredits(app, ...)")
            refused = _gate(cast(FlaskCredits, credits).check(cost))
            if refused is not None:
                return refused
            return view(*args, **kwargs)

        return cast(F, guarded)

    return decorate
