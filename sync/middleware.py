"""HTTP behaviour every route shares: problem JSON, guards, CORS, ETags, gzip, metrics, logs."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from sync.api import CACHE, CACHED_ROUTES, METRICS, Problem, problem
from sync.cache import CachedBody

__all__ = ["middlewares"]

log = structlog.get_logger("sync.api")
# Request ids: unique per process and cheap (uuid4 reads the OS entropy pool every request).
_PROCESS = f"{os.getpid():x}{int(time.time()) & 0xFFFF:04x}"
_REQUESTS = itertools.count(1)
_COMPRESS_OVER = 1400  # bytes: below one packet gzip saves nothing worth the CPU
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "ETag",
}


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request under its route template, with a bound log context."""
    started = time.perf_counter()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=f"{_PROCESS}-{next(_REQUESTS):x}")
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects travel as exceptions
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = _route(request)
        metrics = request.app[METRICS]
        metrics.http_requests.labels(route, request.method, str(status)).inc()
        metrics.http_duration.labels(route).observe(elapsed)
        log.debug(
            "http.request",
            method=request.method,
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS":
        return web.Response(
            status=204,
            headers={
                **_CORS,
                "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", "*"
                ),
                "Access-Control-Max-Age": "86400",
            },
        )
    response = await handler(request)
    response.headers.update(_CORS)
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is problem JSON; nothing internal (traces, paths) reaches the client."""
    try:
        return await handler(request)
    except Problem as exc:
        return problem(exc.status, exc.detail)
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods))
        return problem(405, f"method {request.method} not allowed", headers={"Allow": allow})
    except web.HTTPNotFound:
        return problem(404, "Endpoint not found")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason)
    except Exception:
        log.exception("http.error", path=request.path)
        return problem(500, "internal error; the mirror's logs have the details")


@web.middleware
async def guards(request: web.Request, handler: Handler) -> web.StreamResponse:
    raw = request.raw_path
    if "\x00" in raw or re.search("%00", raw, re.IGNORECASE):
        raise Problem(400, "NUL byte in request")
    path = request.path
    if len(path) > 1 and path.endswith("/"):
        # Collapse leading slashes so the redirect never leaves this host (`//evil.com/`).
        target = "/" + path.strip("/")
        if request.query_string:
            target += "?" + request.query_string
        raise web.HTTPPermanentRedirect(target)
    return await handler(request)


@web.middleware
async def conditional(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Registry reads come from the response cache while the store is unchanged; every 200
    GET gets an ETag (If-None-Match → 304) and gzip when the client accepts it."""
    if request.method not in ("GET", "HEAD"):
        return await handler(request)
    cache = request.app[CACHE]
    key = request.path_qs
    cacheable = request.match_info.route.name in CACHED_ROUTES
    item = cache.get(key) if cacheable else None
    if item is None:
        response = await handler(request)
        if (
            response.status != 200
            or not isinstance(response, web.Response)
            or not isinstance(response.body, bytes)
        ):
            return response
        item = (
            cache.put(key, response.body)
            if cacheable
            else CachedBody(
                response.body,
                '"' + hashlib.blake2b(response.body, digest_size=16).hexdigest() + '"',
            )
        )
        content_type = response.content_type
    else:
        content_type = "application/json"
    headers = {"ETag": item.etag, "Vary": "Accept-Encoding"}
    wanted = request.headers.get("If-None-Match", "")
    if wanted and (wanted.strip() == "*" or item.etag in [t.strip() for t in wanted.split(",")]):
        return web.Response(status=304, headers=headers)
    if len(item.body) > _COMPRESS_OVER and "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=item.compressed(), headers=headers, content_type=content_type)
    return web.Response(body=item.body, headers=headers, content_type=content_type)


def middlewares() -> list[web.middleware]:  # type: ignore[valid-type]
    return [observe, cors, errors, guards, conditional]
