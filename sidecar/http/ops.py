"""Operational admin routes: the outbox writer's progress and its dead letters."""

from __future__ import annotations

from aiohttp import web

from sidecar import errors
from sidecar.http.appkeys import LEDGER, WRITER, WRITER_PROCESS
from sidecar.http.errors import json_response
from sidecar.http.routes import authorize
from sidecar.ledger import store_call
from sidecar.persistence.writer import outbox_status, stats_dict

ops_routes = web.RouteTableDef()


@ops_routes.get("/v1/admin/outbox")
async def outbox(request: web.Request) -> web.Response:
    """Per shard: length, unwritten entries, writer lag in seconds, dead letters."""
    authorize(request, "admin")
    ledger = request.app[LEDGER]
    shards = await store_call(outbox_status(ledger.redis, ledger.keys, ledger.clock()))
    writer, child = request.app.get(WRITER), request.app.get(WRITER_PROCESS)
    if writer is not None:
        writer_view: object = {"mode": "inline", **stats_dict(writer.stats)}
    elif child is not None:
        writer_view = child.status()
    else:
        writer_view = {"mode": "off"}
    return json_response(
        {
            "shards": shards,
            "unwritten": sum(s["unwritten"] for s in shards),
            "lag_s": max((s["lag_s"] for s in shards), default=0.0),
            "dead_letters": sum(s["dead_letters"] for s in shards),
            "writer": writer_view,
        }
    )


@ops_routes.get("/v1/admin/outbox/dead-letters")
async def dead_letters(request: web.Request) -> web.Response:
    """The entries the writer gave up on, with their error, oldest first."""
    authorize(request, "admin")
    ledger = request.app[LEDGER]
    try:
        shard = int(request.query.get("shard", "0"))
        count = int(request.query.get("count", "100"))
    except ValueError:
        raise errors.InvalidInput("shard and count must be integers") from None
    if not 0 <= shard < ledger.keys.shards or not 1 <= count <= 1000:
        raise errors.InvalidInput(f"shard must be in [0, {ledger.keys.shards}), count in [1, 1000]")
    raw = await store_call(ledger.redis.xrange(ledger.keys.dead_letters(shard), count=count))
    entries = [
        {"id": i.decode(), "fields": {k.decode(): v.decode() for k, v in f.items()}} for i, f in raw
    ]
    return json_response({"shard": shard, "entries": entries})
