"""Writes a :class:`~sidecar.persistence.projection.Batch` into SQL: one upsert per table and
kind of row, each guarded by its version (a transaction's seq, a settings change's, a spend
state's, a plan change's or a token change's outbox entry id), so applying a batch again, or
an older one, changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from sidecar.persistence import audit_store
from sidecar.persistence.models import (
    Account,
    ApiKey,
    ApiToken,
    CreditAllocation,
    CreditBalance,
    CreditHold,
    CreditTransaction,
    Plan,
    table_of,
)
from sidecar.persistence.projection import (
    ALLOC_COLS,
    BUCKET_DEF_COLS,
    BUCKET_STATE_COLS,
    HOLD_DEF_COLS,
    HOLD_STATE_COLS,
    KEY_COLS,
    PLAN_COLS,
    PLAN_NEXT_COLS,
    SETTINGS_COLS,
    SPEND_COLS,
    STATE_COLS,
    TOKEN_COLS,
    TXN_COLS,
    Batch,
    Row,
)


async def apply(conn: AsyncConnection, batch: Batch) -> None:
    """Writes a batch; the caller owns the SQL transaction (one per batch)."""
    # Rows for accounts that only appear in key entries; the upserts below create the rest.
    bare = batch.touched_accounts - batch.settings.keys() - batch.account_state.keys()
    accounts = table_of(Account)
    await _upsert(conn, accounts, ("id",), [(a,) for a in sorted(bare)], ["id"])
    await _upsert(
        conn,
        accounts,
        SETTINGS_COLS,
        list(batch.settings.values()),
        ["id"],
        update=SETTINGS_COLS[2:],
        extra_set={"created_at": 'COALESCE("accounts"."created_at", excluded."created_at")'},
        where='"accounts"."settings_version" < excluded."settings_version"',
    )
    await _upsert(
        conn,
        accounts,
        STATE_COLS,
        list(batch.account_state.values()),
        ["id"],
        update=STATE_COLS[1:],
        where='"accounts"."seq" < excluded."seq"',
    )
    await _upsert(
        conn,
        accounts,
        SPEND_COLS,
        list(batch.spend.values()),
        ["id"],
        update=SPEND_COLS[1:],
        where='"accounts"."spend_version" < excluded."spend_version"',
    )
    await _upsert(
        conn,
        accounts,
        PLAN_NEXT_COLS,
        list(batch.plan_next.values()),
        ["id"],
        update=PLAN_NEXT_COLS[1:],
        where='"accounts"."plan_version" < excluded."plan_version"',
    )
    for table, pk, def_cols, defs, state_cols, state in (
        (
            table_of(CreditBalance),
            ["account", "bucket_id"],
            BUCKET_DEF_COLS,
            batch.bucket_defs,
            BUCKET_STATE_COLS,
            batch.bucket_state,
        ),
        (
            table_of(CreditHold),
            ["account", "hold_id"],
            HOLD_DEF_COLS,
            batch.hold_defs,
            HOLD_STATE_COLS,
            batch.hold_state,
        ),
    ):
        # Definitions are immutable: set whenever they arrive. State moves forward only.
        await _upsert(conn, table, def_cols, list(defs.values()), pk, update=def_cols[2:])
        where = f'"{table.name}"."version" < excluded."version"'
        rows = list(state.values())
        await _upsert(conn, table, state_cols, rows, pk, update=state_cols[2:], where=where)
    await _upsert(
        conn,
        table_of(ApiKey),
        KEY_COLS,
        list(batch.keys.values()),
        ["key_id"],
        # a later key entry (a limit changed, a revocation) updates what it may change
        update=(
            "spend_limit_credits",
            "spend_limit_interval",
            "spend_limit_interval_count",
            "settings_version",
        ),
        extra_set={"revoked_at": 'COALESCE("api_keys"."revoked_at", excluded."revoked_at")'},
        where='"api_keys"."settings_version" < excluded."settings_version"',
    )
    if batch.key_spend:
        # An update, never an insert: a key's row comes from its key entry, which the outbox
        # holds before any transaction of the key.
        keys = table_of(ApiKey)
        await conn.execute(
            update(keys)
            .where(
                keys.c.key_id == bindparam("k"),
                keys.c.spend_version < bindparam("v"),
            )
            .values(spend_state=bindparam("s"), spend_version=bindparam("v")),
            [{"k": k, "s": s, "v": v} for k, s, v in batch.key_spend.values()],
        )
    await _upsert(
        conn,
        table_of(Plan),
        PLAN_COLS,
        list(batch.plans.values()),
        ["id"],
        update=PLAN_COLS[1:],
        where='"plans"."version" < excluded."version"',
    )
    await _upsert(
        conn,
        table_of(ApiToken),
        TOKEN_COLS,
        list(batch.tokens.values()),
        ["id"],
        update=TOKEN_COLS[1:],
        where='"api_tokens"."version" < excluded."version"',
    )
    batch.audit_head = await audit_store.append(conn, batch.audits)
    await _upsert(conn, table_of(CreditTransaction), TXN_COLS, list(batch.txns.values()), ["id"])
    await _upsert(
        conn,
        table_of(CreditAllocation),
        ALLOC_COLS,
        list(batch.allocs.values()),
        ["transaction_id", "bucket_id"],
    )


@lru_cache(maxsize=64)
def _statement(
    dialect: str,
    table: Table,
    cols: tuple[str, ...],
    conflict: tuple[str, ...],
    update: tuple[str, ...],
    extra_set: tuple[tuple[str, str], ...],
    where: str | None,
) -> tuple[str, tuple[Any, ...]]:
    """The upsert's SQL, and the values of the columns it fills with their defaults."""
    defaults = {
        c.name: c.default.arg  # type: ignore[attr-defined]
        for c in table.columns
        if c.name not in cols and c.default is not None and c.default.is_scalar
    }
    all_cols = cols + tuple(defaults)
    sets = [f'"{c}" = excluded."{c}"' for c in update]
    sets += [f'"{c}" = {expr}' for c, expr in extra_set]
    action = "DO NOTHING"
    if sets:
        action = "DO UPDATE SET " + ", ".join(sets) + (f" WHERE {where}" if where else "")
    names = ", ".join(f'"{c}"' for c in all_cols)
    keys = ", ".join(f'"{c}"' for c in conflict)
    # Identifiers come from our own table metadata, values are bound: nothing user-supplied.
    if dialect == "postgresql":
        # One statement per batch: one array per column, unnested server-side (asyncpg
        # sends arrays natively); far cheaper than one execution per row.
        pg = postgresql.dialect()  # type: ignore[no-untyped-call]
        casts = ", ".join(
            f"${i}::{table.c[c].type.compile(dialect=pg)}[]" for i, c in enumerate(all_cols, 1)
        )
        sql = (
            f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({casts}) '  # noqa: S608
            f"ON CONFLICT ({keys}) {action}"
        )
    else:
        marks = ", ".join("?" for _ in all_cols)
        sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks}) ON CONFLICT ({keys}) {action}'  # noqa: S608
    return sql, tuple(defaults.values())


async def _upsert(
    conn: AsyncConnection,
    table: Table,
    cols: tuple[str, ...],
    rows: list[Row],
    conflict: list[str],
    *,
    update: Sequence[str] = (),
    extra_set: dict[str, str] | None = None,
    where: str | None = None,
) -> None:
    """One multi-row INSERT … ON CONFLICT of rows already bound for the dialect (see
    :class:`Batch`), sent as a plain executemany: SQLAlchemy's per-row parameter handling
    was most of the writer's time."""
    if not rows:
        return
    dialect = conn.dialect.name
    sql, tail = _statement(
        dialect,
        table,
        cols,
        tuple(conflict),
        tuple(update),
        tuple((extra_set or {}).items()),
        where,
    )
    if tail:
        rows = [row + tail for row in rows]
    if dialect == "postgresql":
        await conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*rows, strict=True)))
    else:
        await conn.exec_driver_sql(sql, rows)
