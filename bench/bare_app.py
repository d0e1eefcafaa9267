"""The HTTP ceiling of one Python process: an aiohttp handler on uvloop that reads the request
body and returns 200 with a small JSON body, as ``POST /v1/check`` does, and nothing else.

    python -m bench.bare_app --port P
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

BODY = b'{"allowed":true}'


async def check(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bare_app")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    app = web.Application()
    app.router.add_post("/v1/check", check)
    app.router.add_get("/healthz", healthz)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
