"""HTTP behaviour every route shares: problem JSON, guards, CORS, ETags, gzip, metrics, logs."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import string
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from sync.serve.api import CACHE, CACHED_ROUTES, METRICS, Problem, problem
from sync.serve.auth import gate
from sync.serve.cache import CachedBody
from sync.serve.routing import route_label, view_of

__all__ = ["canonical_location", "middlewares", "none_match", "wants_gzip"]

log = structlog.get_logger("sync.serve.api")
# Request ids: unique per process and cheap (uuid4 reads the OS entropy pool every request).
_PROCESS = f"{os.getpid():x}{int(time.time()) & 0xFFFF:04x}"
_REQUESTS = itertools.count(1)
_COMPRESS_OVER = 1400  # bytes: below one packet gzip saves nothing worth the CPU
_CORS = {
    "Access-Control-Allow-Origin": "*",
    # A browser client must see the challenge of a view with auth to know where to log in.
    "Access-Control-Expose-Headers": "ETag, WWW-Authenticate",
}


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
        route = route_label(request)
        view = view_of(request)
        request.app[METRICS].observe_request(view, route, request.method, status, elapsed)
        log.debug(
            "http.request",
            method=request.method,
            view=view,
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


# Characters a path may carry as they are (RFC 3986 pchar and `/`); everything else is
# percent-encoded, so no browser can read the Location as another host: WHATWG URL parsing
# drops tab, CR and LF and takes `\` for `/`, which would turn `/\t/evil` into `//evil`.
_PATH_SAFE = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%")
_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# A query cannot move a URL to another host: it comes back byte for byte, but for what no
# request line can hold and a header must not (controls, spaces, non-ASCII) and `#`.
_QUERY_UNSAFE = re.compile("[\x00-\x20\x7f-\U0010ffff#]")


def _encode(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def canonical_location(path: str, query: str) -> str:
    """The 308 target for a raw path with trailing slashes: the same path and query on this
    host, whatever the path holds. It starts with exactly one `/` followed by neither `/`
    nor `\\`, so a browser resolves it to a path on the host the client asked."""
    path = "".join(c if c in _PATH_SAFE else _encode(c) for c in path.strip("/"))
    target = "/" + _BARE_PERCENT.sub("%25", path)
    if query:
        target += "?" + _QUERY_UNSAFE.sub(lambda m: _encode(m[0]), query)
    return target


@web.middleware
async def guards(request: web.Request, handler: Handler) -> web.StreamResponse:
    raw = request.raw_path
    if "\x00" in raw or re.search("%00", raw, re.IGNORECASE):
        raise Problem(400, "NUL byte in request")
    # The request line's own bytes: decoding turns `%2F` into a slash, `%23` into `#` and
    # `%26` into a new parameter, and URL parsing reads `//x?%3F` as a host and re-quotes.
    if raw.startswith("/"):
        path, _, query = raw.partition("#")[0].partition("?")
    else:  # absolute-form (`GET http://host/path`)
        path, query = request.rel_url.raw_path, request.rel_url.raw_query_string
    if len(path) > 1 and path.endswith("/"):
        # Not HTTPPermanentRedirect: it re-parses the Location with yarl, which decodes
        # `%3F` in the query and collapses what was just encoded.
        return web.Response(status=308, headers={"Location": canonical_location(path, query)})
    return await handler(request)


_CODING = re.compile(
    r"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*"
    r"(?:;[ \t]*[qQ][ \t]*=[ \t]*(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?))?[ \t]*"
)


def _codings(header: str) -> dict[str, float]:
    """Accept-Encoding as {coding: qvalue} (RFC 9110 §12.5.3); malformed members say nothing."""
    weights: dict[str, float] = {}
    for member in header.split(","):
        match = _CODING.fullmatch(member)
        if match is not None:
            coding = match[1].lower()
            weight = float(match[2]) if match[2] is not None else 1.0
            # Listed twice: the lower weight, so a refusal is never overridden.
            weights[coding] = min(weight, weights.get(coding, weight))
    return weights


def wants_gzip(header: str | None) -> bool:
    """Whether gzip is acceptable and at least as welcome as identity where the client
    weighed identity (itself or through `*`). Identity is sent even when refused: a
    registry read is never a 406."""
    if header is None:
        return False  # RFC 9110 allows any coding then, but plain clients (curl) read bytes
    weights = _codings(header)
    anything = weights.get("*", 0.0)
    gzip = weights.get("gzip", weights.get("x-gzip", anything))
    return gzip > 0 and gzip >= weights.get("identity", anything)


_ENTITY_TAG = re.compile(r'(?:[Ww]/)?("[^"]*")|(\*)')


def none_match(header: str, etag: str) -> bool:
    """If-None-Match by the weak comparison (RFC 9110 §13.1.2): `W/"x"` matches `"x"` (a
    proxy that compressed our response hands the tag back weakened); `*` matches any."""
    return any(m[2] or m[1] == etag for m in _ENTITY_TAG.finditer(header))


@web.middleware
async def conditional(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Registry reads come from the response cache while the store is unchanged; every 200
    GET gets an ETag (If-None-Match → 304) and gzip when the client accepts it."""
    if request.method not in ("GET", "HEAD"):
        return await handler(request)
    cache = request.app[CACHE]
    # The view is part of the key: a reload may give a path to another view, the store unchanged.
    key = f"{view_of(request)}\x00{request.path_qs}"
    cacheable = request.match_info.route.name in CACHED_ROUTES
    # The state the handler reads in: what it renders is filed under it, or nowhere.
    state = cache.state() if cacheable else None
    item = cache.get(key, state) if state is not None else None
    if item is None:
        response = await handler(request)
        if (
            response.status != 200
            or not isinstance(response, web.Response)
            or not isinstance(response.body, bytes)
        ):
            return response
        item = (
            cache.put(key, response.body, state)
            if state is not None
            else CachedBody(
                response.body,
                '"' + hashlib.blake2b(response.body, digest_size=16).hexdigest() + '"',
            )
        )
        content_type = response.content_type
    else:
        content_type = "application/json"
    headers = {"ETag": item.etag, "Vary": "Accept-Encoding"}
    wanted = request.headers.get("If-None-Match")
    if wanted is not None and none_match(wanted, item.etag):
        return web.Response(status=304, headers=headers)
    if len(item.body) > _COMPRESS_OVER and wants_gzip(request.headers.get("Accept-Encoding")):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=item.compressed(), headers=headers, content_type=content_type)
    return web.Response(body=item.body, headers=headers, content_type=content_type)


def middlewares() -> list[web.middleware]:  # type: ignore[valid-type]
    return [observe, cors, errors, guards, gate, conditional]
