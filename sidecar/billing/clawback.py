"""Refunds and disputes: the money Stripe has taken back from the merchant on a purchase's
Charge, and the credits to take back (or give back) for it.

Every refund and dispute event (``charge.refunded``, ``refund.*``, ``charge.refund.updated``,
``charge.dispute.*``) is merged into the purchase's view of its Charge
(``stripe_purchases.clawback_state``) so that no older view can undo a newer one, whatever
order the events arrive in: a refund's status only moves forward (pending -> succeeded ->
failed or canceled), a dispute's funds, once withdrawn or reinstated, stay so, and a closed
dispute stays closed. ``charge.refunded`` carries the Charge without its refunds (API version
2022-11-15 and later), so they are listed from Stripe; so are all refunds and disputes of the
Charge the first time the purchase sees one (a view that starts complete).

What counts, in the Charge's own amount and currency:
- refunds that are not failed or canceled (a pending refund is money on its way back; one
  that fails later gives its credits back);
- disputes whose funds were withdrawn and not reinstated, and not won. An inquiry
  (``warning_*``) withdraws nothing and takes nothing back.
The clawback target is ``credits x min(charge amount, refunded + disputed) / charge amount``,
rounded down, set in the ledger with the view's version (revoke.lua): a lower target gives
credits back; a call from an older view changes nothing. A refund or dispute in another currency
than its Charge, or a Charge that does not belong to the purchase, cannot be reconciled: the
event is refused as a dead letter that names the reason.
"""

from __future__ import annotations

from typing import Any

from sidecar.billing.context import Billing, NotYet, Refused
from sidecar.billing.gateway import Charge

REFUND_EVENTS = (
    "charge.refunded",
    "charge.refund.updated",
    "refund.created",
    "refund.updated",
    "refund.failed",
)
DISPUTE_EVENTS = (
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
)
EVENTS = REFUND_EVENTS + DISPUTE_EVENTS
# A refund's status only moves forward; failed and canceled ones returned nothing.
_RANK = {"pending": 0, "requires_action": 0, "succeeded": 1, "failed": 2, "canceled": 2}
NOT_REFUNDED = 2
CLOSED = ("won", "lost", "warning_closed", "prevented")


def _id(value: Any) -> str | None:
    """An id field, expanded or not."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _amount(obj: dict[str, Any], what: str) -> int:
    v = obj.get("amount")
    if type(v) is not int or v < 0:
        raise Refused(f"{what} {obj.get('id')} has no valid amount: {v!r}")
    return v


def _currency(obj: dict[str, Any], what: str) -> str:
    v = obj.get("currency")
    if not isinstance(v, str) or not v:
        raise Refused(f"{what} {obj.get('id')} has no currency")
    return v.lower()


def refund_view(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "amount": _amount(r, "refund"),
        "currency": _currency(r, "refund"),
        "status": str(r.get("status") or "pending"),
    }


def dispute_view(etype: str, d: dict[str, Any]) -> dict[str, Any]:
    """What a Dispute (in an event of type ``etype``) says about the money."""
    bts = [bt for bt in d.get("balance_transactions") or [] if isinstance(bt, dict)]
    status = str(d.get("status") or "")
    return {
        "amount": _amount(d, "dispute"),
        "currency": _currency(d, "dispute"),
        "withdrawn": etype == "charge.dispute.funds_withdrawn"
        or status == "lost"
        or any(int(bt.get("amount") or 0) < 0 for bt in bts),
        "reinstated": etype == "charge.dispute.funds_reinstated"
        or any(int(bt.get("amount") or 0) > 0 for bt in bts),
        "closed": status if status in CLOSED else None,
    }


def merge_refund(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    if old is None:
        return new
    keep_old = _RANK.get(old["status"], 0) > _RANK.get(new["status"], 0)
    return new | {"status": old["status"]} if keep_old else new


def merge_dispute(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    if old is None:
        return new
    return new | {
        "withdrawn": old["withdrawn"] or new["withdrawn"],
        "reinstated": old["reinstated"] or new["reinstated"],
        "closed": old["closed"] or new["closed"],
    }


def money(state: dict[str, Any], currency: str) -> tuple[int, int]:
    """(refunded, disputed) of a merged view, in the Charge's currency."""
    refunded = disputed = 0
    for rid, r in (state.get("refunds") or {}).items():
        if r["currency"] != currency:
            raise Refused(f"refund {rid} is in {r['currency']}, its charge in {currency}")
        if _RANK.get(r["status"], 0) < NOT_REFUNDED:
            refunded += int(r["amount"])
    for did, d in (state.get("disputes") or {}).items():
        if d["currency"] != currency:
            raise Refused(f"dispute {did} is in {d['currency']}, its charge in {currency}")
        if d["withdrawn"] and not d["reinstated"] and d["closed"] not in ("won", "warning_closed"):
            disputed += int(d["amount"])
    return refunded, disputed


async def charge_event(b: Billing, etype: str, obj: dict[str, Any]) -> str:
    """Any refund or dispute event: merges what it says into the purchase, then sets the
    clawback from the merged view."""
    kind = obj.get("object")
    charge_id = _id(obj.get("id")) if kind == "charge" else _id(obj.get("charge"))
    if charge_id is None:
        return f"ignored: {etype} names no charge"
    pi = _id(obj.get("payment_intent"))
    charge: Charge | None = None
    if pi is None:  # a refund or dispute may omit it: the Charge has it
        charge = await b.stripe().charge(charge_id)
        pi = charge.payment_intent
    if pi is None:
        return f"ignored: charge {charge_id} has no payment intent (not a purchase)"
    purchase = await b.purchases.by_payment_intent(pi)
    if purchase is None:
        raise NotYet(f"no purchase with payment intent {pi} (yet)")
    if purchase["charge_id"] not in (None, charge_id):
        raise Refused(
            f"charge {charge_id} of payment intent {pi} is not the purchase's charge "
            f"{purchase['charge_id']}"
        )
    if purchase["charge_amount"] is not None:
        charge = Charge(
            charge_id, int(purchase["charge_amount"]), str(purchase["charge_currency"]), pi
        )
    elif charge is None:  # the first time: the Charge as Stripe has it, not as an event says
        charge = await b.stripe().charge(charge_id)
    if charge.payment_intent != pi:
        raise Refused(
            f"charge {charge_id} belongs to payment intent {charge.payment_intent}, not to "
            f"{pi} of purchase {purchase['id']}"
        )
    if charge.amount <= 0:
        raise Refused(f"charge {charge_id} has amount {charge.amount}: no ratio to apply")

    refunds: dict[str, dict[str, Any]] = {}
    disputes: dict[str, dict[str, Any]] = {}
    first = purchase["clawback_state"] is None  # (a purchase of an earlier release too)
    if etype == "charge.refunded" or first:
        for r in await b.stripe().refunds(charge_id):
            refunds[r.id] = {"amount": r.amount, "currency": r.currency, "status": r.status}
    if first:
        for d in await b.stripe().disputes(charge_id):
            disputes[str(d["id"])] = dispute_view("", d)
    if kind == "refund":
        refunds[str(obj.get("id"))] = refund_view(obj)
    elif kind == "dispute":
        did = str(obj.get("id"))
        disputes[did] = merge_dispute(disputes.get(did), dispute_view(etype, obj))

    # Validated before anything is stored: what cannot be reconciled changes nothing.
    for what, seen in (("refund", refunds), ("dispute", disputes)):
        for oid, o in seen.items():
            if o["currency"] != charge.currency:
                raise Refused(
                    f"{what} {oid} is in {o['currency']}, its charge {charge_id} in "
                    f"{charge.currency}"
                )

    def merge(row: dict[str, Any]) -> dict[str, Any] | None:
        state = dict(row["clawback_state"] or {})
        known_r = dict(state.get("refunds") or {})
        known_d = dict(state.get("disputes") or {})
        for rid, r in refunds.items():
            known_r[rid] = merge_refund(known_r.get(rid), r)
        for did, d in disputes.items():
            known_d[did] = merge_dispute(known_d.get(did), d)
        changes: dict[str, Any] = {}
        merged = {"refunds": known_r, "disputes": known_d}
        if merged != {
            "refunds": state.get("refunds") or {},
            "disputes": state.get("disputes") or {},
        }:
            changes["clawback_state"] = merged
        if row["charge_id"] is None:
            changes |= {
                "charge_id": charge.id,
                "charge_amount": charge.amount,
                "charge_currency": charge.currency,
            }
        return changes or None

    row = await b.purchases.merge_clawback(purchase["id"], merge, b.clock())
    if row is None:
        raise NotYet(f"purchase {purchase['id']} vanished")
    return await apply(b, row)


async def apply(b: Billing, row: dict[str, Any]) -> str:
    """Sets the purchase's clawback in the ledger from its merged view."""
    if row["status"] != "paid" or int(row["credits"] or 0) <= 0:
        raise NotYet(f"purchase {row['id']} has not been granted yet")
    amount, currency = int(row["charge_amount"]), str(row["charge_currency"])
    refunded, disputed = money(row["clawback_state"] or {}, currency)
    credits = int(row["credits"])
    taken_money = min(amount, refunded + disputed)
    target = credits * taken_money // amount
    what = f"refunded {refunded}, disputed {disputed} of {amount} {currency}"
    await b.purchases.update(
        row["id"], b.clock(), amount_refunded=refunded, amount_disputed=disputed
    )
    buckets = list((row["buckets"] or {}).get("ids", []))
    policy = b.settings.refund_policy
    if policy == "flag":
        held = sum(
            x.held for x in (await b.ledger.balance(row["account"])).buckets if x.id in buckets
        )
        note = f"{what}: {target} credits would be taken back (refund_policy=flag)"
        if held:
            note += f"; {held} of the purchase's credits are held"
        await b.purchases.update(row["id"], b.clock(), flagged=note, clawback_target=target)
        return "flagged: " + note
    r = await b.ledger.revoke(
        row["account"],
        row["id"],
        target,
        buckets=buckets,
        policy="unspent" if policy == "revoke_unspent" else "negative",
        version=int(row["clawback_version"]),
        description=f"Stripe {what}",
    )
    await b.purchases.update(row["id"], b.clock(), clawback_target=r.target)
    if r.transaction_id is None:
        return f"{what}: clawback stays at {r.target} credits (view {r.version})"
    if r.given_back:
        return f"{what}: gave back {r.given_back} credits (clawback now {r.target})"
    return (
        f"{what}: took back {r.taken} credits, {r.pending} held ones when their hold ends, "
        f"added {r.debt_added} to debt, {r.unrecovered} already spent (clawback {r.target})"
    )
