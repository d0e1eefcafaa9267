"""The floor under the sidecar's round trip, for bench/middleware.py: the least an HTTP service
that makes one Redis call takes on this machine. aiohttp (uvloop) answers ``POST /v1/check``
from one EVALSHA of a trivial script through redis-py, as the sidecar's stack does, but with no
auth, no validation and no ledger: the sidecar's own round trip cannot be below it, so neither
can a middleware's added latency (which includes that round trip)."""

from __future__ import annotations

import argparse
import asyncio

import orjson
import redis.asyncio as aredis
import uvloop
from aiohttp import web

SCRIPT = "return {'ok', ARGV[1], 1}"


async def serve(port: int, redis_url: str) -> None:
    r = aredis.Redis.from_url(redis_url)
    sha = await r.script_load(SCRIPT)

    async def check(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        reply = await r.evalsha(sha, 1, "{floor}", body["account"])
        return web.Response(
            body=orjson.dumps({"allowed": True, "account": reply[1].decode(), "balance": reply[2]}),
            content_type="application/json",
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/check", check)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis", required=True)
    a = p.parse_args()
    uvloop.run(serve(a.port, a.redis))


if __name__ == "__main__":
    main()
