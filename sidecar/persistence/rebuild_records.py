"""The idempotency and usage records of an account, rebuilt from the SQL ledger's transactions
(usages and settles within the retention, with their refunds): what deduct.lua, close_hold.lua
and refund.lua keep in Redis for replays and refunds (sidecar/persistence/rebuild.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import RowMapping, select
from sqlalchemy.ext.asyncio import AsyncConnection

from sidecar.errors import RebuildError
from sidecar.ledger.outbox import PoisonEntry, TxnEntry
from sidecar.ledger.units import from_ms
from sidecar.persistence.models import CreditHold, CreditTransaction, table_of

HOLDS = table_of(CreditHold)
TXNS = table_of(CreditTransaction)


class CallRevokes:
    """The 'revoke' transactions an account's clawbacks appended after another transaction of
    the same call (ids <call's id>.<n>): a hold's close or a refund gives credits back to a
    bucket whose purchase was refunded, and its clawback takes them at once (claw_returns in
    sidecar/lua/_lib.lua). Redis keeps, for replays, the balance after those revokes; SQL has
    it in the last of them."""

    def __init__(self) -> None:
        self._by_seq: dict[int, tuple[str, int]] = {}

    def add(self, seq: int, txid: str, balance: int) -> None:
        call, dot, _ = txid.partition(".")
        if dot:
            self._by_seq[seq] = (call, balance)

    def balance_after(self, seq: int, txid: str, balance: int) -> int:
        """The balance after transaction ``txid`` (sequence ``seq``, ``balance`` after it) and
        the revokes of its call that directly follow it."""
        call = txid.partition(".")[0]
        while (nxt := self._by_seq.get(seq + 1)) is not None and nxt[0] == call:
            seq, balance = seq + 1, nxt[1]
        return balance


async def records(
    conn: AsyncConnection,
    account: str,
    now: int,
    retention: int,
    claws: CallRevokes | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Idempotency and usage records of the usages within the retention at ``now`` (ms), with
    their refunds; idempotency records only while their replay window lasts. ``claws``: the
    account's revokes, which set the balance a refund's replay answers."""
    claws = claws or CallRevokes()
    cutoff = now - retention

    def recent(ttype: str) -> Any:
        return (
            select(TXNS)
            .where(
                TXNS.c.account == account,
                TXNS.c.type == ttype,
                TXNS.c.created_at >= from_ms(cutoff),  # the index's column ...
                TXNS.c.created_ms > cutoff,  # ... and the exact bound
            )
            .order_by(TXNS.c.seq)
        )

    usages = [txn_entry(r) for r in (await conn.execute(recent("usage"))).mappings()]
    # A settle that charged is refundable like a usage (close_hold.lua keeps a usage record
    # for it): what it charged per bucket follows from the hold's parts, drawn in order.
    settles = [
        t
        for t in map(txn_entry, (await conn.execute(recent("settle"))).mappings())
        if t.charged > 0 and t.hold_id
    ]
    parts: dict[str, list[list[Any]]] = {}
    windows: dict[str, Any] = {}
    if settles:
        rows = await conn.execute(
            select(HOLDS.c.hold_id, HOLDS.c.alloc).where(
                HOLDS.c.account == account, HOLDS.c.hold_id.in_({t.hold_id for t in settles})
            )
        )
        held = {str(h): alloc or {} for h, alloc in rows}
        parts = {h: alloc.get("parts", []) for h, alloc in held.items()}
        windows = {h: alloc.get("sw") for h, alloc in held.items()}
    usages = sorted([*usages, *settles], key=lambda t: t.seq)
    refunds: dict[str, list[TxnEntry]] = {u.id: [] for u in usages}
    # A refund comes after its usage, so the refunds of these usages are all after the cutoff.
    for r in map(txn_entry, (await conn.execute(recent("refund"))).mappings()):
        if r.source_transaction_id in refunds:
            refunds[r.source_transaction_id].append(r)

    latest: dict[str, dict[str, Any]] = {}  # idempotency key -> its latest usage
    usage: list[dict[str, Any]] = []
    for u in usages:
        extra_fields: dict[str, Any] = {}
        if u.type == "settle":
            cost = u.charged
            # what it charged of the hold, then what a settle above the hold drew (the
            # entry's negative alloc) and put into the overdraft
            alloc = _charged(parts.get(str(u.hold_id), []), cost)
            alloc += [[b, n] for b, n in u.alloc if n < 0]
            overdraft = u.overdraft
            sw = windows.get(str(u.hold_id))  # a settle counted in its hold's window
            xw = u.details.get("xw")
            if type(xw) is int:  # ... and its extra in another count, given back first
                extra_fields["xw"] = xw
                extra_fields["xn"] = overdraft - sum(n for _, n in u.alloc if n < 0)
        else:
            cost = -u.amount
            alloc = [[b, n] for b, n in u.alloc]
            overdraft = u.overdraft
            sw = u.spend_window
            kw = u.details.get("kw")
            if u.key_id and type(kw) is int:  # it counted against its API key's limit
                extra_fields["kid"], extra_fields["kw"] = u.key_id, kw
        left = cost
        done: list[dict[str, Any]] = []
        for r in refunds[u.id]:
            refunded = r.amount + r.forfeited  # what it asked for: given back + forfeited
            arg = r.requested_amount
            if arg is None:  # entries written before the field existed: the likelier argument
                arg = "" if refunded == left else str(refunded)
            left -= refunded
            done.append(
                {
                    "id": r.refund_id,
                    "arg": arg,
                    "tx": r.id,
                    "bal": claws.balance_after(r.seq, r.id, r.balance),
                    "refunded": refunded,
                    "forfeited": r.forfeited,
                }
            )
        usage.append(
            {
                "tx": u.id,
                "cost": cost,
                "alloc": alloc,
                "overdraft": overdraft,
                "at": u.ts,
                "refunds": done,
            }
            | ({} if sw is None else {"sw": int(sw)})
            | extra_fields
        )
        if u.idempotency_key and any(r.voided_attempt for r in refunds[u.id]):
            # voided (sidecar/lua/void.lua): its record was deleted, a retry is a new request
            latest.pop(u.idempotency_key, None)
        elif u.idempotency_key:
            record: dict[str, Any] = {
                "key": u.idempotency_key,
                "tx": u.id,
                "cost": cost,
                "bal": u.balance,
                "at": u.ts,
            }
            # The request digest and the replay window (deduct.lua); usages written before
            # they existed have neither: their records bind the cost only, for the retention.
            if u.request_fp is not None:
                record["fp"] = u.request_fp
            if u.replay_ms is not None:
                record["window"] = u.replay_ms
            latest[u.idempotency_key] = record
    return [r for r in latest.values() if r["at"] + r.get("window", retention) > now], usage


# The columns of credit_transactions (and its archive) an outbox entry is read back from.
ENTRY_COLUMNS = (
    "id",
    "account",
    "seq",
    "type",
    "amount",
    "balance_after",
    "debt_after",
    "created_ms",
    "description",
    "metadata",
    "idempotency_key",
    "hold_id",
    "source_transaction_id",
    "key_id",
    "route",
    "details",
)


def txn_entry(row: RowMapping) -> TxnEntry:
    """A transaction row of SQL as the outbox entry it was written from."""
    try:
        return TxnEntry.from_sql(row)
    except PoisonEntry as e:
        raise RebuildError(
            f"account {row['account']}: transaction {row['id']} in SQL is not one the "
            f"writer could have written ({e})"
        ) from None


def _charged(parts: list[list[Any]], charge: int) -> list[list[Any]]:
    """What a settle for ``charge`` took per bucket from a hold's parts (in the order they
    were drawn), as a usage's alloc: [[bucket, -credits], ...] (sidecar/lua/_lib.lua close_hold)."""
    out: list[list[Any]] = []
    for bucket, n in parts:
        c = min(int(n), charge)
        charge -= c
        if c > 0:
            out.append([bucket, -c])
    return out
