"""Operational admin routes: the outbox writer's progress and its dead letters."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sidecar import errors
from sidecar import outbox as entries
from sidecar.http.appkeys import LEDGER, WRITER, WRITER_PROCESS
from sidecar.http.errors import json_response
from sidecar.http.routes import authorize, query_int
from sidecar.ledger import store_call
from sidecar.persistence.writer import outbox_status, stats_dict

ops_routes = web.RouteTableDef()


@ops_routes.get("/v1/admin/outbox")
async def outbox(request: web.Request) -> web.Response:
    """Per shard: length, unwritten entries, writer lag in seconds, dead letters; and the
    writer: this process's (its mode: inline, process, or off when another process runs it)
    and ``running``: whether a writer holds every shard's lease, renewed within the lease
    period (a hung writer's lapses), and, for a child process of this one, that it is alive.
    """
    authorize(request, "admin")
    ledger = request.app[LEDGER]
    shards = await store_call(
        outbox_status(ledger.redis, ledger.keys, ledger.clock()), ledger.deadline_s
    )
    leased = all(s["writer_lease"] is not None for s in shards)
    writer, child = request.app.get(WRITER), request.app.get(WRITER_PROCESS)
    writer_view: dict[str, object]
    if writer is not None:
        writer_view = {"mode": "inline", **stats_dict(writer.stats), "running": leased}
    elif child is not None:
        writer_view = child.status()
        writer_view["running"] = bool(writer_view["alive"]) and leased
    else:
        writer_view = {"mode": "off", "running": leased}
    return json_response(
        {
            "shards": shards,
            "unwritten": sum(s["unwritten"] for s in shards),
            "lag_s": max((s["lag_s"] for s in shards), default=0.0),
            "dead_letters": sum(s["dead_letters"] for s in shards),
            "writer": writer_view,
        }
    )


def _shard(request: web.Request, value: object) -> int:
    shards = request.app[LEDGER].keys.shards
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < shards:
        raise errors.InvalidInput(f"shard must be an integer in [0, {shards})", field="shard")
    return value


@ops_routes.get("/v1/admin/outbox/dead-letters")
async def dead_letters(request: web.Request) -> web.Response:
    """The entries the writer gave up on, with their error, oldest first."""
    authorize(request, "admin")
    ledger = request.app[LEDGER]
    shard = query_int(request, "shard", 0, 0, ledger.keys.shards - 1)
    count = query_int(request, "count", 100, 1, 1000)
    raw = await store_call(
        ledger.redis.xrange(ledger.keys.dead_letters(shard), count=count), ledger.deadline_s
    )
    entries = [
        {
            "id": i.decode(),
            "entry": _decoded(f),
            "fields": {k.decode(): v.decode() for k, v in f.items()},
        }
        for i, f in raw
    ]
    return json_response({"shard": shard, "entries": entries})


def _decoded(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    """The dead letter's entry as JSON, or None if it has none (``fields`` shows it raw)."""
    try:
        return entries.decode(fields)
    except ValueError:
        return None


@ops_routes.post("/v1/admin/outbox/dead-letters/retry")
async def retry_dead_letters(request: web.Request) -> web.Response:
    """Moves dead letters back into the outbox (after fixing what made SQL refuse them); the
    writer applies them like any entry, idempotently. Body: {"shard", "ids"?} (default all)."""
    authorize(request, "admin")
    ledger = request.app[LEDGER]
    try:
        # body_exists, not can_read_body: the body has been read already (sidecar/http/server.py)
        body = await request.json() if request.body_exists else {}
    except ValueError:
        raise errors.InvalidJSON("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise errors.InvalidInput("the body must be a JSON object")
    shard = _shard(request, body.get("shard", 0))
    ids = body.get("ids")
    if ids is not None and not (
        isinstance(ids, list) and len(ids) <= 1000 and all(isinstance(i, str) for i in ids)
    ):
        raise errors.InvalidInput("ids must be a list of at most 1000 ids", field="ids")
    dead, stream = ledger.keys.dead_letters(shard), ledger.keys.outbox(shard)
    raw = await store_call(ledger.redis.xrange(dead, count=1000), ledger.deadline_s)
    chosen = [(i, f) for i, f in raw if ids is None or i.decode() in ids]
    if ids is not None and (missing := sorted(set(ids) - {i.decode() for i, _ in chosen})):
        raise errors.InvalidInput(f"no such dead letter: {', '.join(missing[:5])}", field="ids")
    retried = []
    for entry_id, fields in chosen:
        original = {k: v for k, v in fields.items() if not k.startswith(b"dl_")}
        # Its first outbox id: settings entries are ordered by it, so a late retry cannot
        # overwrite newer settings.
        original[entries.ORIG_ID.encode()] = (
            fields.get(entries.ORIG_ID.encode()) or fields.get(b"dl_entry_id") or entry_id
        )
        # Same slot (one hash tag): the move is one MULTI, so an entry is never in both or
        # in neither.
        pipe = ledger.redis.pipeline(transaction=True)
        pipe.xadd(stream, original)
        pipe.xdel(dead, entry_id)
        await store_call(pipe.execute(), ledger.deadline_s)
        retried.append(entry_id.decode())
    return json_response({"shard": shard, "retried": retried})
