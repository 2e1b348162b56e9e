"""The local HTTP gateway: deployed functions over WAGI/CGI-style HTTP.

``POST /functions/{name}``: the body goes to the function's stdin, the request
becomes CGI environment variables, and its stdout comes back with 200. A trap,
a non-zero exit or a timeout is a 502 with the error envelope. Whatever a
function does, the agent goes on: every invocation is sandboxed with a time
and a memory limit by the runtime.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from agent.counters import FunctionCounters
from agent.runtime.base import Limits, Runtime
from edgesync.errors import BadRequest
from edgesync.http_errors import error_middleware

log = logging.getLogger("edgesync.gateway")

RUNTIME = web.AppKey("runtime", Runtime)
LIMITS = web.AppKey("limits", Limits)
COUNTERS = web.AppKey("counters", FunctionCounters)
MAX_BODY = 16 * 1024 * 1024
# Headers never passed as HTTP_*: those with variables of their own, credentials
# (RFC 3875 4.1.18: they never reach a function), and Proxy (as HTTP_PROXY it would
# pose as a proxy setting: "httpoxy").
WITHHELD_HEADERS = frozenset(
    {"CONTENT_TYPE", "CONTENT_LENGTH", "AUTHORIZATION", "PROXY_AUTHORIZATION", "PROXY"}
)

# The envelope for every failure, rendered by the same middleware as the control plane's.
errors = error_middleware(log)


def cgi_environment(request: web.Request, body_length: int) -> dict[str, str]:
    """WAGI/CGI variables for one request."""
    env = {
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path,
        # As sent (RFC 3875 4.1.7): a decoded query would turn "%2B" into a "+" (a space).
        "QUERY_STRING": request.rel_url.raw_query_string,
        "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        "CONTENT_LENGTH": str(body_length),
        "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
        "REMOTE_ADDR": request.remote or "",
        "X_FULL_URL": str(request.url),
    }
    for key, value in request.headers.items():
        name = key.upper().replace("-", "_")
        if name in WITHHELD_HEADERS:
            continue
        env[f"HTTP_{name}"] = value
    return env


async def invoke(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    body = await request.read()
    runtime = request.app[RUNTIME]
    try:
        environment = cgi_environment(request, len(body))
    except ValueError as exc:  # a header that cannot become an environment variable
        raise BadRequest(str(exc)) from exc
    # Only deployed functions are counted: a call of an unknown name is no error of one.
    counters = request.app.get(COUNTERS) if name in runtime.functions() else None
    try:
        result = await runtime.invoke(name, body, environment, request.app[LIMITS])
    except Exception:  # a trap, a non-zero exit, a timeout (or a bug): the call failed
        if counters is not None:
            counters.count(name, failed=True)
        raise
    if counters is not None:
        counters.count(name, failed=False)
    return web.Response(body=result.stdout, content_type="application/octet-stream")


async def list_functions(request: web.Request) -> web.Response:
    table = request.app[RUNTIME].functions()
    functions = [ref.to_dict() for _, ref in sorted(table.items())]
    return web.Response(text=json.dumps({"functions": functions}), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.json_response(
        {"status": "ok", "runtime": runtime.name, "functions": len(runtime.functions())}
    )


def make_gateway(
    runtime: Runtime, limits: Limits, counters: FunctionCounters | None = None
) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY)
    app[RUNTIME] = runtime
    app[LIMITS] = limits
    if counters is not None:  # the health gate's input (agent/counters.py)
        app[COUNTERS] = counters
    app.router.add_post("/functions/{name}", invoke)
    app.router.add_get("/functions", list_functions)
    app.router.add_get("/healthz", healthz)
    return app
