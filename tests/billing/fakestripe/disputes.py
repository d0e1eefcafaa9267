"""Disputes: inquiries (no money moves) and chargebacks (funds withdrawn, reinstated if the
merchant wins).

https://docs.stripe.com/api/disputes/object (status: warning_needs_response,
warning_under_review, warning_closed, needs_response, under_review, won, lost;
balance_transactions: "zero, one, or two balance transactions that show funds withdrawn and
reinstated"), https://docs.stripe.com/disputes/how-disputes-work (an inquiry withdraws
nothing and may escalate to a chargeback; the disputed amount and a fee are withdrawn when a
chargeback opens and returned if it is won), https://docs.stripe.com/api/events/types
(charge.dispute.created, .updated, .closed, .funds_withdrawn, .funds_reinstated: each carries
the Dispute)."""

from __future__ import annotations

import copy

from tests.billing.fakestripe.charges import Charges
from tests.billing.fakestripe.forms import (
    Params,
    StripeObject,
    check_known,
    missing,
    names,
    new_id,
    no_expand,
    now,
    page,
    text,
)
from tests.billing.fakestripe.server import Route

DISPUTE_FEE = 1500


class Disputes(Charges):
    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            ("GET", r"/v1/disputes", self._list_disputes),
            ("GET", r"/v1/disputes/(?P<id>[^/]+)", self._retrieve_dispute),
        ]

    # -- test controls -----------------------------------------------------------------------

    def dispute(
        self,
        charge: str,
        *,
        inquiry: bool = False,
        amount: int | None = None,
        reason: str = "fraudulent",
    ) -> StripeObject:
        """The cardholder disputes ``charge``: an inquiry (``warning_needs_response``, nothing
        withdrawn) or a chargeback (``needs_response``, the amount withdrawn). Sends
        charge.dispute.created (and charge.dispute.funds_withdrawn). Returns the Dispute."""
        ch = self.charges[charge]
        d: StripeObject = {
            "id": new_id("dp_"),
            "object": "dispute",
            "amount": ch["amount"] if amount is None else amount,
            "balance_transactions": [],
            "charge": charge,
            "created": now(),
            "currency": ch["currency"],
            "evidence_details": {"due_by": now() + 7 * 86400, "has_evidence": False},
            "is_charge_refundable": inquiry,
            "livemode": False,
            "metadata": {},
            "payment_intent": ch["payment_intent"],
            "reason": reason,
            "status": "warning_needs_response" if inquiry else "needs_response",
        }
        self.disputes[d["id"]] = d
        ch["disputed"] = True
        self.emit("charge.dispute.created", d)
        if not inquiry:
            self._withdraw(d)
        return copy.deepcopy(d)

    def escalate(self, dispute: str) -> StripeObject:
        """An inquiry becomes a chargeback: funds withdrawn (charge.dispute.updated,
        charge.dispute.funds_withdrawn)."""
        d = self.disputes[dispute]
        if not d["status"].startswith("warning_") or d["status"] == "warning_closed":
            raise ValueError(f"dispute {dispute} is {d['status']}: not an open inquiry")
        d.update(status="needs_response", is_charge_refundable=False)
        self.emit("charge.dispute.updated", d)
        self._withdraw(d)
        return copy.deepcopy(d)

    def close_dispute(self, dispute: str, status: str) -> StripeObject:
        """The dispute ends: ``won`` (withdrawn funds are reinstated:
        charge.dispute.funds_reinstated), ``lost``, or for an inquiry ``warning_closed``.
        Sends charge.dispute.closed."""
        d = self.disputes[dispute]
        inquiry = d["status"].startswith("warning_")
        allowed = ("warning_closed",) if inquiry else ("won", "lost")
        if status not in allowed or d["status"] in ("won", "lost", "warning_closed"):
            raise ValueError(f"dispute {dispute} ({d['status']}) cannot close as {status}")
        d["status"] = status
        self.emit("charge.dispute.closed", d)
        if status == "won" and d["balance_transactions"]:
            d["balance_transactions"].append(
                self._balance_transaction(d, d["amount"], "dispute_reversal", "Chargeback reversal")
            )
            self.emit("charge.dispute.funds_reinstated", d)
        return copy.deepcopy(d)

    def _withdraw(self, d: StripeObject) -> None:
        d["balance_transactions"].append(
            self._balance_transaction(
                d, -d["amount"], "dispute", f"Chargeback withdrawal for {d['charge']}"
            )
        )
        self.emit("charge.dispute.funds_withdrawn", d)

    @staticmethod
    def _balance_transaction(
        d: StripeObject, amount: int, category: str, description: str
    ) -> StripeObject:
        """https://docs.stripe.com/api/balance_transactions/object (reporting_category
        dispute / dispute_reversal)"""
        fee = DISPUTE_FEE if amount < 0 else 0
        return {
            "id": new_id("txn_"),
            "object": "balance_transaction",
            "amount": amount,
            "available_on": now(),
            "created": now(),
            "currency": d["currency"],
            "description": description,
            "exchange_rate": None,
            "fee": fee,
            "fee_details": [],
            "net": amount - fee,
            "reporting_category": category,
            "source": d["id"],
            "status": "available",
            "type": "adjustment",
        }

    def _list_disputes(self, params: Params) -> StripeObject:
        """https://docs.stripe.com/api/disputes/list (``charge``, ``payment_intent``)"""
        check_known(
            params, names("charge created ending_before expand limit payment_intent starting_after")
        )
        no_expand(params)
        charge_id, pi_id = text(params, "charge"), text(params, "payment_intent")
        mine = [
            copy.deepcopy(d)
            for d in reversed(self.disputes.values())
            if (charge_id is None or d["charge"] == charge_id)
            and (pi_id is None or d["payment_intent"] == pi_id)
        ]
        return page(params, mine, "/v1/disputes")

    def _retrieve_dispute(self, params: Params, id: str) -> StripeObject:
        check_known(params, frozenset({"expand"}))
        no_expand(params)
        if id not in self.disputes:
            raise missing("dispute", id, "dispute", status=404)
        return copy.deepcopy(self.disputes[id])
