"""Customer portal sessions, and the page their URL opens.

https://docs.stripe.com/api/customer_portal/sessions/create (at the pinned API version):
``customer`` is required and must exist (an unknown one is a 400 ``resource_missing`` naming
``customer``, as for Checkout's ``customer``); ``return_url`` is optional (the link back on the
portal; without it the page has none, as without the configuration's default);
``configuration``, ``flow_data`` and ``on_behalf_of`` change the portal and are not modelled
(refused); ``locale`` is kept. https://docs.stripe.com/api/customer_portal/sessions/object:
``id`` bps_…, ``object`` ``billing_portal.session``, ``configuration``, ``created``,
``customer``, ``flow``, ``livemode``, ``locale``, ``on_behalf_of``, ``return_url``, ``url``;
"sessions are short-lived": a session is a one-off link, so no retrieve or list endpoint.

The ``url`` points at a page the fake serves itself (``/p/session/<secret>``, no API key, as
the customer's browser opens it): "Stripe customer portal (fake)" with a link back to the
session's ``return_url``, for browser tests."""

from __future__ import annotations

import html
from urllib.parse import urlsplit

from aiohttp import web

from tests.billing.fakestripe.endpoints import Endpoints
from tests.billing.fakestripe.forms import (
    Params,
    StripeObject,
    check_known,
    invalid,
    missing,
    names,
    new_id,
    no_expand,
    now,
    required,
    text,
)
from tests.billing.fakestripe.server import Page, Route

_SESSION_CREATE = names("configuration customer expand flow_data locale on_behalf_of return_url")
PAGE_TITLE = "Stripe customer portal (fake)"


class BillingPortal(Endpoints):
    def __init__(self, api_key: str = "sk_test_fakestripe") -> None:
        super().__init__(api_key)
        self.portal_sessions: dict[str, StripeObject] = {}
        self._portal_secrets: dict[str, str] = {}  # the URL's secret -> session id

    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            ("POST", r"/v1/billing_portal/sessions", self._create_portal_session),
        ]

    def pages(self) -> list[Page]:
        return [*super().pages(), ("/p/session/{secret}", self._portal_page)]

    def _create_portal_session(self, params: Params) -> StripeObject:
        check_known(params, _SESSION_CREATE)
        no_expand(params)
        customer = text(params, "customer")
        if not customer:
            raise required("customer")
        for name in ("configuration", "flow_data", "on_behalf_of"):
            if name in params:
                raise invalid(f"fakestripe does not implement {name}", param=name)
        return_url = text(params, "return_url")
        if return_url is not None and urlsplit(return_url).scheme not in ("http", "https"):
            raise invalid("Not a valid URL", param="return_url", code="url_invalid")
        if customer not in self.customers:
            raise missing("customer", customer, "customer")
        secret = new_id("test_", 40)
        session: StripeObject = {
            "id": new_id("bps_"),
            "object": "billing_portal.session",
            "configuration": "bpc_fakestripe_default",
            "created": now(),
            "customer": customer,
            "flow": None,
            "livemode": False,
            "locale": text(params, "locale"),
            "on_behalf_of": None,
            "return_url": return_url,
            "url": f"{self.url}/p/session/{secret}",
        }
        self.portal_sessions[session["id"]] = session
        self._portal_secrets[secret] = session["id"]
        return dict(session)

    async def _portal_page(self, request: web.Request) -> web.Response:
        sid = self._portal_secrets.get(request.match_info["secret"])
        if sid is None:
            return web.Response(status=404, text="This portal link is not valid.")
        s = self.portal_sessions[sid]
        back = ""
        if s["return_url"]:
            back = f'<p><a id="return" href="{html.escape(s["return_url"])}">Return</a></p>'
        body = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{PAGE_TITLE}</title></head><body><main><h1>{PAGE_TITLE}</h1>"
            f"<p>Customer {html.escape(s['customer'])}</p>{back}</main></body></html>"
        )
        return web.Response(text=body, content_type="text/html")
