"""Operational admin routes: the outbox writer's progress and its dead letters (read and moved
back by sidecar/persistence/deadletters.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from sidecar import errors
from sidecar.http.auth import ADMIN, READ
from sidecar.http.contract import Audited, Call, Out, Routes
from sidecar.http.queries import (
    DeadLettersQuery,
)
from sidecar.http.read_responses import (
    DeadLetter,
    DeadLetters,
    DeadLettersRetried,
    Outbox,
    OutboxShard,
)
from sidecar.http.state import LEDGER, WRITER, WRITER_PROCESS
from sidecar.ledger.redis_calls import (
    store_call,
)
from sidecar.persistence import deadletters
from sidecar.persistence.outbox_status import outbox_status
from sidecar.persistence.writer import stats_dict

ops_routes = Routes()


@ops_routes.route(
    "GET",
    "/v1/admin/outbox",
    "The outbox per shard: length, unwritten entries, writer lag, dead letters",
    tag="operations",
    auth=READ,
    responses={200: Out(Outbox, "the outbox's state and the writer's")},
    errors={503: None},
)
async def outbox(call: Call[None, None, None]) -> Outbox:
    """Per shard: length, unwritten entries, writer lag in seconds, dead letters; and the
    writer: this process's (its mode: inline, process, or off when another process runs it)
    and ``running``: whether a writer holds every shard's lease, renewed within the lease
    period (a hung writer's lapses), and, for a child process of this one, that it is alive.
    """
    ledger = call.app[LEDGER]
    shards = await store_call(
        outbox_status(ledger.redis, ledger.keys, ledger.clock()), ledger.deadline_s
    )
    leased = all(s["writer_lease"] is not None for s in shards)
    writer, child = call.app.get(WRITER), call.app.get(WRITER_PROCESS)
    writer_view: dict[str, Any]
    if writer is not None:
        writer_view = {"mode": "inline", **stats_dict(writer.stats), "running": leased}
    elif child is not None:
        writer_view = dict(child.status())
        writer_view["running"] = bool(writer_view["alive"]) and leased
    else:
        writer_view = {"mode": "off", "running": leased}
    return Outbox(
        shards=[OutboxShard(**s) for s in shards],
        unwritten=sum(s["unwritten"] for s in shards),
        lag_s=max((s["lag_s"] for s in shards), default=0.0),
        dead_letters=sum(s["dead_letters"] for s in shards),
        writer=writer_view,
    )


def _shard(call: Call[Any, Any, Any], shard: int) -> int:
    shards = call.app[LEDGER].keys.shards
    if not 0 <= shard < shards:
        raise errors.InvalidInput(f"shard: must be an integer in [0, {shards - 1}]", field="shard")
    return shard


@ops_routes.route(
    "GET",
    "/v1/admin/outbox/dead-letters",
    "The entries the writer gave up on, with their error, oldest first",
    tag="operations",
    auth=READ,
    query=DeadLettersQuery,
    responses={200: Out(DeadLetters, "the shard's dead letters")},
    errors={503: None},
)
async def dead_letters(call: Call[None, DeadLettersQuery, None]) -> DeadLetters:
    ledger = call.app[LEDGER]
    shard = _shard(call, call.query.shard)
    found = await deadletters.dead_letters(
        ledger.redis, ledger.keys, shard, call.query.count, ledger.deadline_s
    )
    return DeadLetters(
        shard=shard,
        entries=[DeadLetter(id=d.id, entry=d.entry, fields=d.fields) for d in found],
    )


class DeadLetterRetryRequest(BaseModel):
    """Which dead letters to move back: a shard's, all of them or those ``ids``. Documents the
    body; the handler reads it (no body is the default; the shard's bound is the app's)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    shard: StrictInt = Field(0, ge=0)
    ids: list[str] | None = Field(
        None,
        max_length=deadletters.MAX_RETRY,
        description="the dead letters to retry (default: all of the shard's)",
    )


@ops_routes.route(
    "POST",
    "/v1/admin/outbox/dead-letters/retry",
    "Move dead letters back into the outbox (unknown ids: 422, nothing moved)",
    tag="operations",
    auth=ADMIN,
    audit=Audited("dead_letters.retry"),
    # Read by the handler: no body is the default, and a body that is not an object is a 422.
    body_schema=DeadLetterRetryRequest.model_json_schema(),
    body_required=False,
    responses={200: Out(DeadLettersRetried, "the ids moved back")},
    errors=(400, 413, 422, 503),
)
async def retry_dead_letters(call: Call[None, None, None]) -> DeadLettersRetried:
    """Moves dead letters back into the outbox (after fixing what made SQL refuse them); the
    writer applies them like any entry, idempotently. Body: {"shard", "ids"?} (default all)."""
    ledger = call.app[LEDGER]
    request = call.request
    try:
        # body_exists, not can_read_body: the body has been read already (sidecar/http/server.py)
        raw = await request.json() if request.body_exists else {}
    except ValueError:
        raise errors.InvalidJSON("the body is not valid JSON") from None
    if not isinstance(raw, dict):
        raise errors.InvalidInput("the body must be a JSON object")
    # Checked here, as DeadLetterRetryRequest documents them: the shard's bound is the app's.
    shards, shard = call.app[LEDGER].keys.shards, raw.get("shard", 0)
    if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard < shards:
        raise errors.InvalidInput(f"shard must be an integer in [0, {shards})", field="shard")
    ids = raw.get("ids")
    if ids is not None and not (
        isinstance(ids, list)
        and len(ids) <= deadletters.MAX_RETRY
        and all(isinstance(i, str) for i in ids)
    ):
        raise errors.InvalidInput("ids must be a list of at most 1000 ids", field="ids")
    try:
        retried = await deadletters.retry(ledger.redis, ledger.keys, shard, ids, ledger.deadline_s)
    except deadletters.UnknownDeadLetters as e:
        missing = ", ".join(e.missing[:5])
        raise errors.InvalidInput(f"no such dead letter: {missing}", field="ids") from None
    return DeadLettersRetried(shard=shard, retried=retried)
