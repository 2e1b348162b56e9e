"""The baseline of the poll benchmark: the cheapest aiohttp answer to a poll.

Same interpreter, same aiohttp, same path shape as ``GET /api/v1/nodes/{id}/sync``,
one handler answering 304 with an ETag, no middleware, no access log. Whatever
edgesync spends above this is its own cost (routing, middlewares, auth, plan cache,
metrics).
"""

from __future__ import annotations

import argparse

from aiohttp import web

ETAG = '"bench-baseline-etag"'


async def sync(request: web.Request) -> web.Response:
    return web.Response(status=304, headers={"ETag": ETAG})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/api/v1/nodes/{node_id}/sync", sync)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
