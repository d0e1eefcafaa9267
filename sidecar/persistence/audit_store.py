"""The audit trail in SQL (docs/audit.md): appending kind=audit entries in outbox order with
their hash chain (the writer, in its batch's transaction), reading them back filtered and
paged, and walking them for ``credit-sidecar audit verify``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sidecar.billing.stores.sql import Sql
from sidecar.ledger.audit import GENESIS, AuditRow, chain_hash
from sidecar.persistence.models import AuditLogEntry, table_of

TABLE = table_of(AuditLogEntry)


async def append(
    conn: AsyncConnection, entries: Mapping[str, dict[str, Any]]
) -> tuple[int, str] | None:
    """Appends ``entries`` (outbox entry id -> body, in outbox order) after the last row,
    chained; entries already there (a batch written again) are skipped. Returns the new head
    (seq, hash), or None when nothing was appended."""
    if not entries:
        return None
    if conn.dialect.name == "postgresql":
        # one chain: nobody else appends between reading the head and inserting after it
        await conn.execute(text("LOCK TABLE audit_log IN EXCLUSIVE MODE"))
    known = set(
        (await conn.execute(select(TABLE.c.entry_id).where(TABLE.c.entry_id.in_(list(entries)))))
        .scalars()
        .all()
    )
    last = (
        await conn.execute(select(TABLE.c.seq, TABLE.c.hash).order_by(TABLE.c.seq.desc()).limit(1))
    ).first()
    seq, prev = (int(last[0]), str(last[1])) if last is not None else (0, GENESIS)
    rows: list[dict[str, Any]] = []
    for entry_id, body in entries.items():
        if entry_id in known:
            continue
        seq += 1
        digest = chain_hash(prev, seq, body)
        rows.append(
            {
                "seq": seq,
                "entry_id": entry_id,
                "at_ms": body["at"],
                "token_id": body["token_id"],
                "token_name": body["token_name"],
                "request_id": body["request_id"],
                "action": body["action"],
                "account": body["account"],
                "target": body["target"],
                "reason": body["reason"],
                "before": orjson.dumps(body["before"]).decode(),
                "after": orjson.dumps(body["after"]).decode(),
                "replayed": body["replayed"],
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    if not rows:
        return None
    await conn.execute(insert(TABLE), rows)
    return seq, prev


def row_of(r: Any) -> AuditRow:
    """A row as the trail it is part of: its body rebuilt from the columns (what was hashed)."""
    body = {
        "at": int(r.at_ms),
        "token_id": r.token_id,
        "token_name": r.token_name,
        "request_id": r.request_id,
        "action": r.action,
        "account": r.account,
        "target": r.target,
        "reason": r.reason,
        "before": orjson.loads(r.before),
        "after": orjson.loads(r.after),
        "replayed": bool(r.replayed),
    }
    return AuditRow(int(r.seq), body, r.prev_hash, r.hash)


async def walk(engine: AsyncEngine, page: int = 1000) -> list[AuditRow]:
    """Every row, in seq order."""
    out: list[AuditRow] = []
    after = 0
    async with engine.connect() as conn:
        while True:
            rows = (
                await conn.execute(
                    select(TABLE).where(TABLE.c.seq > after).order_by(TABLE.c.seq).limit(page)
                )
            ).all()
            out.extend(row_of(r) for r in rows)
            if len(rows) < page:
                return out
            after = int(rows[-1].seq)


@dataclass(frozen=True)
class AuditQuery:
    account: str | None = None
    token_id: str | None = None
    action: str | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    before_seq: int | None = None
    limit: int = 50


async def find(sql: Sql, q: AuditQuery) -> list[AuditRow]:
    """Rows matching ``q``, newest first (paged by ``before_seq``); LedgerUnavailable when
    SQL cannot be reached."""
    stmt = select(TABLE)
    if q.account is not None:
        stmt = stmt.where(TABLE.c.account == q.account)
    if q.token_id is not None:
        stmt = stmt.where(TABLE.c.token_id == q.token_id)
    if q.action is not None:
        stmt = stmt.where(TABLE.c.action == q.action)
    if q.from_ms is not None:
        stmt = stmt.where(TABLE.c.at_ms >= q.from_ms)
    if q.to_ms is not None:
        stmt = stmt.where(TABLE.c.at_ms < q.to_ms)
    if q.before_seq is not None:
        stmt = stmt.where(TABLE.c.seq < q.before_seq)
    stmt = stmt.order_by(TABLE.c.seq.desc()).limit(q.limit)
    async with sql.tx() as conn:
        return [row_of(r) for r in (await conn.execute(stmt)).all()]
