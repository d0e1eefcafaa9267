"""Charges and Refunds, including refunds that stay pending and refunds that fail after
``charge.refunded`` was sent.

https://docs.stripe.com/api/charges/object, https://docs.stripe.com/api/refunds/create,
https://docs.stripe.com/api/refunds/object (status: pending, requires_action, succeeded,
failed, canceled; failure_reason once failed), https://docs.stripe.com/refunds#failed-refunds
(a refund can fail after it succeeded: its status becomes failed and the money returns to the
merchant's balance), https://docs.stripe.com/api/events/types (charge.refunded carries the
Charge; refund.created / refund.updated / refund.failed and charge.refund.updated carry the
Refund)."""

from __future__ import annotations

import copy

from tests.billing.fakestripe.customers import Customers
from tests.billing.fakestripe.forms import (
    Params,
    StripeError,
    StripeObject,
    check_known,
    integer,
    invalid,
    metadata,
    missing,
    names,
    new_id,
    no_expand,
    now,
    page,
    text,
)
from tests.billing.fakestripe.server import Route

_REFUND_CREATE = names(
    "amount charge currency customer expand instructions_email metadata origin payment_intent "
    "reason refund_application_fee reverse_transfer"
)
_REFUND_LIST = names("charge created ending_before expand limit payment_intent starting_after")
_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
# Statuses whose money does not go back to the customer.
NOT_REFUNDED = ("failed", "canceled")


class Charges(Customers):
    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            ("GET", r"/v1/charges/(?P<id>[^/]+)", self._retrieve_charge),
            ("POST", r"/v1/refunds", self._create_refund),
            ("GET", r"/v1/refunds", self._list_refunds),
            ("GET", r"/v1/refunds/(?P<id>[^/]+)", self._retrieve_refund),
        ]

    # -- test controls -----------------------------------------------------------------------

    def refund(
        self, charge: str, amount: int | None = None, *, status: str = "succeeded"
    ) -> StripeObject:
        """A refund the merchant makes in the Dashboard (what ``POST /v1/refunds`` does):
        ``status`` ``succeeded`` (cards) or ``pending``. Returns the Refund."""
        params: Params = {"charge": charge}
        if amount is not None:
            params["amount"] = str(amount)
        return self._refund(params, status)

    def fail_refund(self, refund: str, reason: str = "expired_or_canceled_card") -> StripeObject:
        """The refund fails (after having succeeded or while pending): ``failed`` with
        ``failure_reason``; its amount goes back to the merchant, so the charge's
        ``amount_refunded`` drops. Sends refund.updated, refund.failed, charge.refund.updated."""
        r = self.refunds[refund]
        if r["status"] in NOT_REFUNDED:
            raise ValueError(f"refund {refund} is already {r['status']}")
        r.update(
            status="failed",
            failure_reason=reason,
            failure_balance_transaction=new_id("txn_"),
        )
        self._sync_refunded(r["charge"])
        for etype in ("refund.updated", "refund.failed", "charge.refund.updated"):
            self.emit(etype, r)
        return copy.deepcopy(r)

    def succeed_refund(self, refund: str) -> StripeObject:
        """A pending refund succeeds: refund.updated, charge.refund.updated."""
        r = self.refunds[refund]
        if r["status"] != "pending":
            raise ValueError(f"refund {refund} is {r['status']}, not pending")
        r["status"] = "succeeded"
        for etype in ("refund.updated", "charge.refund.updated"):
            self.emit(etype, r)
        return copy.deepcopy(r)

    # -- charges -----------------------------------------------------------------------------

    def _charge(self, id: str, param: str = "charge") -> StripeObject:
        if id not in self.charges:
            raise missing("charge", id, param, status=404 if param == "id" else 400)
        return self.charges[id]

    def _retrieve_charge(self, params: Params, id: str) -> StripeObject:
        check_known(params, frozenset({"expand"}))
        no_expand(params)
        return copy.deepcopy(self._charge(id, "id"))

    def _sync_refunded(self, charge_id: str) -> None:
        ch = self.charges[charge_id]
        ch["amount_refunded"] = sum(
            r["amount"]
            for r in self.refunds.values()
            if r["charge"] == charge_id and r["status"] not in NOT_REFUNDED
        )
        ch["refunded"] = ch["amount_refunded"] == ch["amount"]

    # -- refunds -----------------------------------------------------------------------------

    def _create_refund(self, params: Params) -> StripeObject:
        return self._refund(params, "succeeded")

    def _refund(self, params: Params, status: str) -> StripeObject:
        check_known(params, _REFUND_CREATE)
        no_expand(params)
        charge_id, pi_id = text(params, "charge"), text(params, "payment_intent")
        if (charge_id is None) == (pi_id is None):
            raise invalid("You must pass either charge or payment_intent (not both).")
        if pi_id is not None:
            pi = self.payment_intents.get(pi_id)
            if pi is None:
                raise missing("payment_intent", pi_id, "payment_intent")
            if not pi.get("latest_charge"):
                raise invalid(
                    f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                    code="charge_not_refundable",
                )
            charge_id = str(pi["latest_charge"])
        assert charge_id is not None
        ch = self._charge(charge_id)
        left = ch["amount"] - ch["amount_refunded"]
        amount = integer(params, "amount")
        amount = left if amount is None else amount
        if amount < 1:
            raise invalid("Invalid positive integer", param="amount")
        if amount > left:
            raise invalid(
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                param="amount",
                code="amount_too_large",
            )
        # https://docs.stripe.com/disputes/how-disputes-work: a disputed charge (funds
        # withdrawn) cannot be refunded; an inquiry's can.
        for d in self.disputes.values():
            if d["charge"] == charge_id and not d["is_charge_refundable"]:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    f"Charge {charge_id} has been charged back; cannot issue a refund.",
                    code="charge_disputed",
                )
        reason = text(params, "reason")
        if reason is not None and reason not in _REASONS:
            raise invalid(f"Invalid reason: {reason}", param="reason")
        r: StripeObject = {
            "id": new_id("re_"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": new_id("txn_"),
            "charge": charge_id,
            "created": now(),
            "currency": ch["currency"],
            "metadata": metadata(params),
            "payment_intent": ch["payment_intent"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": status,
            "transfer_reversal": None,
        }
        self.refunds[r["id"]] = r
        self._sync_refunded(charge_id)
        self.emit("refund.created", r)
        self.emit("charge.refunded", ch)
        return copy.deepcopy(r)

    def _retrieve_refund(self, params: Params, id: str) -> StripeObject:
        check_known(params, frozenset({"expand"}))
        no_expand(params)
        if id not in self.refunds:
            raise missing("refund", id, "refund", status=404)
        return copy.deepcopy(self.refunds[id])

    def _list_refunds(self, params: Params) -> StripeObject:
        check_known(params, _REFUND_LIST)
        no_expand(params)
        charge_id, pi_id = text(params, "charge"), text(params, "payment_intent")
        mine = [
            copy.deepcopy(r)
            for r in reversed(self.refunds.values())  # newest first
            if (charge_id is None or r["charge"] == charge_id)
            and (pi_id is None or r["payment_intent"] == pi_id)
        ]
        return page(params, mine, "/v1/refunds")
