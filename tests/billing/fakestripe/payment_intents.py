"""PaymentIntents: off-session charges that succeed, are declined, need the customer's
authentication, stay processing, or get canceled.

https://docs.stripe.com/api/payment_intents/create: ``off_session`` only with
``confirm=true``; ``return_url`` only with ``confirm=true``, and required then unless the
PaymentIntent cannot redirect: ``automatic_payment_methods`` is on by default (API versions
since 2023-08-16, https://docs.stripe.com/upgrades#2023-08-16) and allows redirects unless
``allow_redirects=never``, or explicit ``payment_method_types`` are given; the two cannot be
combined. https://docs.stripe.com/payments/save-and-reuse#charge-saved-payment-method: an
off-session confirmation that fails answers 402 ``card_error`` with the PaymentIntent
(``requires_payment_method``); a card that needs authentication fails with code and
decline_code ``authentication_required``. https://docs.stripe.com/api/payment_intents/cancel:
cancelable in requires_payment_method, requires_capture, requires_confirmation,
requires_action (processing only in rare cases: refused here). https://docs.stripe.com/api/payment_intents/list.
https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts."""

from __future__ import annotations

import copy
from typing import NoReturn

from tests.billing.fakestripe.disputes import Disputes
from tests.billing.fakestripe.forms import (
    Params,
    StripeError,
    StripeObject,
    boolean,
    check_known,
    hash_param,
    integer,
    invalid,
    metadata,
    missing,
    names,
    new_id,
    no_expand,
    now,
    page,
    str_list,
    text,
    unexpected_state,
)
from tests.billing.fakestripe.server import Route
from tests.billing.fakestripe.state import Behaviour

_PI_CREATE = names(
    "amount application_fee_amount automatic_payment_methods capture_method confirm "
    "confirmation_method confirmation_token currency customer description "
    "error_on_requires_action expand mandate mandate_data metadata off_session on_behalf_of "
    "payment_method payment_method_configuration payment_method_data payment_method_options "
    "payment_method_types radar_options receipt_email return_url setup_future_usage shipping "
    "statement_descriptor statement_descriptor_suffix transfer_data transfer_group "
    "use_stripe_sdk"
)
_APM = names("allow_redirects enabled")
_CANCEL = names("cancellation_reason expand")
_CANCEL_REASONS = ("duplicate", "fraudulent", "requested_by_customer", "abandoned")
_CANCELABLE = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
)
_PI_LIST = names("created customer ending_before expand limit starting_after")
# Stripe's minimum charge amounts, in the smallest unit (JPY has no decimals: yen).
MIN_AMOUNT = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "chf": 50, "jpy": 50}

RETURN_URL_REQUIRED = (
    "A `return_url` must be specified because this Payment Intent is configured to "
    "automatically accept the payment methods enabled in the Dashboard, some of which may "
    "require a full page redirect to succeed. If you do not want to accept redirect-based "
    "payment methods, set `automatic_payment_methods[enabled]` to `true` and "
    "`automatic_payment_methods[allow_redirects]` to `never` when creating Setup Intents and "
    "Payment Intents."
)


class PaymentIntents(Disputes):
    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            ("POST", r"/v1/payment_intents", self._create_payment_intent),
            ("GET", r"/v1/payment_intents", self._list_payment_intents),
            ("GET", r"/v1/payment_intents/(?P<id>[^/]+)", self._retrieve_payment_intent),
            ("POST", r"/v1/payment_intents/(?P<id>[^/]+)/cancel", self._cancel_payment_intent),
        ]

    # -- test controls -----------------------------------------------------------------------

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
        is ``e.error.payment_intent``)."""
        self._behaviours[payment_method] = Behaviour("decline", code, decline_code, message)

    def require_authentication(self, payment_method: str) -> None:
        """The card needs its holder (3D Secure): an off-session confirmation fails with code
        and decline_code ``authentication_required``; an on-session one leaves the
        PaymentIntent ``requires_action``."""
        self._behaviours[payment_method] = Behaviour(
            "decline",
            "authentication_required",
            "authentication_required",
            "Your card was declined. This transaction requires authentication.",
        )

    def process_slowly(self, payment_method: str) -> None:
        """Confirmations with ``payment_method`` stay ``processing`` until
        ``finish_processing``."""
        self._behaviours[payment_method] = Behaviour("processing")

    def finish_processing(self, payment_intent: str, *, succeed: bool = True) -> StripeObject:
        """A processing PaymentIntent succeeds (with its Charge: payment_intent.succeeded,
        charge.succeeded) or fails (payment_intent.payment_failed)."""
        pi = self.payment_intents[payment_intent]
        if pi["status"] != "processing":
            raise ValueError(f"payment intent {payment_intent} is {pi['status']}")
        if succeed:
            self._succeed(pi)
        else:
            pi.update(
                status="requires_payment_method",
                last_payment_error={
                    "type": "card_error",
                    "code": "card_declined",
                    "message": "Your card was declined.",
                },
            )
            self.emit("payment_intent.payment_failed", pi)
        return copy.deepcopy(pi)

    def _succeed(self, pi: StripeObject) -> StripeObject:
        charge = self.new_charge(pi)
        self.emit("payment_intent.succeeded", pi)
        self.emit("charge.succeeded", charge)
        return charge

    # -- the endpoints -----------------------------------------------------------------------

    def _create_payment_intent(self, params: Params) -> StripeObject:
        check_known(params, _PI_CREATE)
        no_expand(params)
        amount = integer(params, "amount")
        if amount is None:
            raise _required("amount")
        currency = text(params, "currency")
        if currency is None:
            raise _required("currency")
        currency = currency.lower()
        minimum = MIN_AMOUNT.get(currency, 1)
        if amount < minimum:
            raise invalid(
                f"Amount must be at least {minimum} in the smallest unit of {currency}",
                param="amount",
                code="amount_too_small",
            )
        customer = self.existing_customer(params)
        payment_method = text(params, "payment_method")
        confirm = boolean(params, "confirm") or False
        off_session = params.get("off_session")
        if off_session is not None:
            if off_session not in ("true", "false", "one_off", "recurring"):
                raise invalid(f"Invalid off_session: {off_session}", param="off_session")
            if not confirm:
                raise invalid(
                    "You may only specify `off_session` when `confirm` is set to true.",
                    param="off_session",
                )
        apm = hash_param(params, "automatic_payment_methods", _APM)
        types = str_list(params, "payment_method_types")
        if apm and types is not None:
            raise invalid(
                "You may only specify one of these parameters: automatic_payment_methods, "
                "payment_method_types."
            )
        return_url = text(params, "return_url")
        if return_url is not None and not confirm:
            raise invalid(
                "The parameter `return_url` can only be used when `confirm` is true.",
                param="return_url",
            )
        apm_on = types is None and apm.get("enabled", "true") == "true"
        redirects = apm_on and apm.get("allow_redirects", "always") != "never"
        if confirm and redirects and return_url is None:
            raise invalid(RETURN_URL_REQUIRED, param="return_url")
        if confirm and payment_method is None:
            raise unexpected_state(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                "payment_method",
            )
        if payment_method is not None:
            pm = self.payment_methods.get(payment_method)
            if pm is None:
                raise missing("PaymentMethod", payment_method, "payment_method")
            if pm["customer"] is not None and pm["customer"] != customer:
                raise invalid(
                    f"The provided PaymentMethod ({payment_method}) belongs to another "
                    "Customer; pass that customer or another PaymentMethod.",
                    param="payment_method",
                )
        pi: StripeObject = {
            "id": new_id("pi_"),
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "automatic_payment_methods": (
                {"enabled": True, "allow_redirects": "always" if redirects else "never"}
                if apm_on
                else None
            ),
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic",
            "client_secret": None,
            "confirmation_method": "automatic",
            "created": now(),
            "currency": currency,
            "customer": customer,
            "description": text(params, "description"),
            "invoice": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata(params),
            "next_action": None,
            "payment_method": payment_method,
            "payment_method_types": types or ["card"],
            "processing": None,
            "receipt_email": text(params, "receipt_email"),
            "setup_future_usage": text(params, "setup_future_usage"),
            "status": "requires_confirmation" if payment_method else "requires_payment_method",
        }
        pi["client_secret"] = f"{pi['id']}_secret_{new_id('', 24)}"
        self.payment_intents[pi["id"]] = pi
        if not confirm:
            return copy.deepcopy(pi)
        assert payment_method is not None
        behaviour = self._behaviours.get(payment_method)
        if behaviour is None:
            self._succeed(pi)
            return copy.deepcopy(pi)
        if behaviour.kind == "processing":
            pi["status"] = "processing"
            self.emit("payment_intent.processing", pi)
            return copy.deepcopy(pi)
        if behaviour.code == "authentication_required" and off_session in (None, "false"):
            pi.update(
                status="requires_action",
                next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {}},
            )
            self.emit("payment_intent.requires_action", pi)
            return copy.deepcopy(pi)
        return self._declined(pi, payment_method, behaviour)

    def _declined(self, pi: StripeObject, payment_method: str, b: Behaviour) -> NoReturn:
        charge = new_id("ch_")
        error: StripeObject = {
            "type": "card_error",
            "code": b.code,
            "message": b.message,
            "charge": charge,
            "payment_method": copy.deepcopy(self.payment_methods[payment_method]),
        }
        if b.decline_code is not None:
            error["decline_code"] = b.decline_code
        pi.update(
            status="requires_payment_method",
            payment_method=None,
            last_payment_error=error,
            latest_charge=charge,
        )
        self.emit("payment_intent.payment_failed", pi)
        raise StripeError(
            402,
            "card_error",
            b.message,
            code=b.code,
            extra={
                key: value
                for key, value in error.items()
                if key in ("decline_code", "charge", "payment_method")
            }
            | {"payment_intent": copy.deepcopy(pi)},
        )

    def _payment_intent(self, id: str) -> StripeObject:
        if id not in self.payment_intents:
            raise missing("payment_intent", id, "intent", status=404)
        return self.payment_intents[id]

    def _retrieve_payment_intent(self, params: Params, id: str) -> StripeObject:
        check_known(params, frozenset({"expand", "client_secret"}))
        no_expand(params)
        return copy.deepcopy(self._payment_intent(id))

    def _cancel_payment_intent(self, params: Params, id: str) -> StripeObject:
        check_known(params, _CANCEL)
        no_expand(params)
        pi = self._payment_intent(id)
        reason = text(params, "cancellation_reason")
        if reason is not None and reason not in _CANCEL_REASONS:
            raise invalid(f"Invalid cancellation_reason: {reason}", param="cancellation_reason")
        if pi["status"] not in _CANCELABLE:
            raise unexpected_state(
                "You cannot cancel this PaymentIntent because it has a status of "
                f"{pi['status']}. Only a PaymentIntent with one of the following statuses may "
                f"be canceled: {', '.join(_CANCELABLE)}."
            )
        pi.update(
            status="canceled", cancellation_reason=reason, canceled_at=now(), next_action=None
        )
        self.emit("payment_intent.canceled", pi)
        return copy.deepcopy(pi)

    def _list_payment_intents(self, params: Params) -> StripeObject:
        check_known(params, _PI_LIST)
        no_expand(params)
        customer = text(params, "customer")
        created = params.get("created")
        gte = 0
        if isinstance(created, dict):
            gte = int(str(created.get("gte", "0")))
        mine = [
            copy.deepcopy(pi)
            for pi in reversed(self.payment_intents.values())  # newest first
            if (customer is None or pi["customer"] == customer) and pi["created"] >= gte
        ]
        return page(params, mine, "/v1/payment_intents")


def _required(param: str) -> StripeError:
    return invalid(f"Missing required param: {param}.", param=param, code="parameter_missing")
