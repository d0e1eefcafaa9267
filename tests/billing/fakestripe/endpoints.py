"""Webhook endpoints, as far as the sidecar reads them: their URL, events and API version.

https://docs.stripe.com/api/webhook_endpoints/list, https://docs.stripe.com/api/webhook_endpoints/object
(``api_version``: "The API version events are rendered as for this webhook endpoint"; null:
the account's default version), https://docs.stripe.com/webhooks/versioning."""

from __future__ import annotations

import copy

from tests.billing.fakestripe.checkout import Checkout
from tests.billing.fakestripe.forms import (
    Params,
    StripeObject,
    check_known,
    names,
    new_id,
    no_expand,
    now,
    page,
)
from tests.billing.fakestripe.server import Route


class Endpoints(Checkout):
    def routes(self) -> list[Route]:
        return [*super().routes(), ("GET", r"/v1/webhook_endpoints", self._list_endpoints)]

    def add_webhook_endpoint(
        self, url: str, *, api_version: str | None, events: list[str] | None = None
    ) -> str:
        """A webhook endpoint of the account; returns its id."""
        we: StripeObject = {
            "id": new_id("we_"),
            "object": "webhook_endpoint",
            "api_version": api_version,
            "application": None,
            "created": now(),
            "description": None,
            "enabled_events": events or ["*"],
            "livemode": False,
            "metadata": {},
            "status": "enabled",
            "url": url,
        }
        self.webhook_endpoints[we["id"]] = we
        return str(we["id"])

    def _list_endpoints(self, params: Params) -> StripeObject:
        check_known(params, names("ending_before expand limit starting_after"))
        no_expand(params)
        mine = [copy.deepcopy(w) for w in reversed(self.webhook_endpoints.values())]
        return page(params, mine, "/v1/webhook_endpoints")
