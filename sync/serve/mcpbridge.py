"""One aiohttp request through an ASGI application, its answer buffered into a `web.Response`.

The MCP SDK speaks ASGI; the mirror speaks aiohttp. Run statelessly with JSON responses, the
SDK answers each POST with one JSON body and never streams, so the answer can be collected
whole and returned as an ordinary response: the mirror's middlewares (metrics, CORS, problem
JSON, the view's auth gate, which edit headers after the handler returns) apply to it as to
any other route, and no second server, port or signal handler is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

__all__ = ["MAX_RESPONSE", "ASGIApp", "call_asgi"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]
# An answer is one tool result: a server's versions are the largest (a few hundred KiB).
MAX_RESPONSE = 8 << 20
# Hop-by-hop or recomputed by aiohttp for the buffered body.
_DROPPED = frozenset({"content-length", "transfer-encoding", "connection"})


class ResponseTooLarge(Exception):
    """The application answered more than the bridge buffers."""


async def call_asgi(
    app: ASGIApp,
    request: web.Request,
    state: dict[str, Any],
    *,
    max_response: int = MAX_RESPONSE,
) -> web.Response:
    """`request` answered by the ASGI `app`; `state` becomes the ASGI scope's state (what the
    application sees as `request.state`)."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.raw_path.split("?", 1)[0].encode("latin-1", "replace"),
        "root_path": "",
        "query_string": request.query_string.encode("latin-1", "replace"),
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": (request.remote, 0) if request.remote else None,
        "server": None,
        "state": state,
    }
    body_done = False
    finished = asyncio.Event()

    async def receive() -> Message:
        nonlocal body_done
        if body_done:
            # Only after the answer: until then the client is, as far as the app knows, there.
            await finished.wait()
            return {"type": "http.disconnect"}
        # Read as a stream, chunk by chunk: the SDK enforces its own body limit as it reads.
        chunk = await request.content.readany()
        if chunk and not request.content.at_eof():
            return {"type": "http.request", "body": chunk, "more_body": True}
        body_done = True
        return {"type": "http.request", "body": chunk, "more_body": False}

    status, headers, body = 500, [], bytearray()

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if len(body) > max_response:
                raise ResponseTooLarge(f"answer over {max_response} bytes")

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    answer: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        key = name.decode("latin-1")
        if key.lower() not in _DROPPED:
            answer.add(key, value.decode("latin-1"))
    return web.Response(status=status, body=bytes(body), headers=answer)
