"""The read API: the official registry's GET routes over the served view, under /v0.1 and /v0.

Handlers are thin and read-only; the bytes they send are the stored JSON, concatenated, never
re-encoded. Errors are RFC 9457 problem JSON as the live official service returns them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from sync import __version__
from sync.config import Config
from sync.metrics import Metrics
from sync.model import format_stamp
from sync.serve.cache import ResponseCache
from sync.serve.routing import BASE, VIEW_ROUTES, view_of
from sync.store import ListQuery, Reader, ServedItem

__all__ = [
    "CACHE",
    "CACHED_ROUTES",
    "CLOCK",
    "CONFIG",
    "LIVE",
    "METRICS",
    "READER",
    "VIEW",
    "Live",
    "Problem",
    "add_routes",
    "encode_cursor",
    "json_response",
    "problem",
]

READER = web.AppKey("reader", Reader)
CONFIG = web.AppKey("config", Config)


class Live:
    """The configuration in force: the one the daemon started with until a reload (SIGHUP)
    replaces it whole. `CONFIG` stays the start-up one (the API's routes and socket)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # Views whose rules and auth a reload changes together, while the writer re-evaluates
        # them: their rows are still the old rules' and their readers already the new auth's,
        # so they answer 503 until both agree.
        self.settling: frozenset[str] = frozenset()


LIVE = web.AppKey("live_config", Live)
METRICS = web.AppKey("metrics", Metrics)
VIEW = web.AppKey("view", str)
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
CACHE = web.AppKey("response_cache", ResponseCache)
# Route names whose 200 responses depend only on the store's content (and the URL and view).
_CACHED = ("servers", "versions", "version", "v0_servers", "v0_versions", "v0_version")
CACHED_ROUTES = frozenset((*_CACHED, *(f"based_{name}" for name in _CACHED)))

PREFIXES = ("/v0.1", "/v0")
# A segment is anything but `/`, as on the official service: aiohttp's default pattern also
# refuses `{` and `}`, which real versions hold (`{{VERSION}}`).
_NAME = "{serverName:[^/]+}"
_VERSION = "{version:[^/]+}"
# RFC 3339 date-time, ASCII digits only (`\d` would also take other scripts' digits).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_US = 1_000_000
# Bounds outside what the store can hold: every stored stamp is after the first, none after
# the second (stamps are fixed-width text, compared as text).
_BEFORE_ALL = "0000-01-01T00:00:00.000000Z"
_AFTER_ALL = format_stamp(datetime.max.replace(tzinfo=UTC))
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
_MAX_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_DAYS_400_YEARS = 146_097  # the Gregorian calendar repeats every 400 years
# strconv.ParseBool, which the official service (Go, huma) uses for booleans.
_BOOLEANS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    title = _TITLES.get(status, "Error")
    body = json.dumps({"title": title, "status": status, "detail": detail})
    return web.Response(
        status=status, text=body, content_type="application/problem+json", headers=headers
    )


def encode_cursor(name: str, version: str) -> str:
    """Opaque and URL-safe (clients append it unencoded): base64url of "name:version"."""
    raw = f"{name}:{version}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_BAD_CURSOR = "invalid cursor: pass back metadata.nextCursor unchanged"


def _decode_cursor(text: str) -> tuple[str, str | None]:
    """The position a cursor names, in either of the two forms a client may hold.

    An aggregator moving from the official registry to this mirror keeps its saved cursor, so
    the official form means what it means there: "name:version", split on the first `:`
    (names cannot contain one, versions can), is after that version; a bare name is after
    every version of that name; and it is never rejected. The forms are told apart by
    construction: every server name contains `/`, which base64url never does, so any cursor
    with a `/` is official and any other must be one of ours.
    """
    if "/" in text:
        # An unencoded `+` in a version arrives as a space, as it does at the official
        # service; read as sent, the cursor sorts just before the version the client meant
        # (` ` < `+`), so the page repeats that item and skips nothing. Turning spaces into
        # `+` instead would skip rows after versions that really contain a space.
        name, sep, version = text.partition(":")
        return (name, version) if sep else (name, None)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Problem(400, _BAD_CURSOR) from None
    name, sep, version = raw.partition(":")
    if not sep or not name or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise Problem(400, _BAD_CURSOR)
    return name, version


def _param(query: Any, key: str) -> str | None:
    """A query parameter as the official service (huma) reads it: the first of repeated
    values, and an empty value is no value (the default applies)."""
    text: str | None = query.get(key)
    return text or None


def _limit(query: Any) -> int:
    text = _param(query, "limit")
    if text is None:
        return 30
    # ASCII digits only, as Go parses them: int() would also take "1_0", " 5" or Arabic digits.
    match = re.fullmatch(r"([+-]?)0*([0-9]+)", text)
    if match is None:
        raise Problem(422, f"validation failed: limit must be an integer, got {text[:20]!r}")
    # Compare the digits' length first: int() refuses numbers past 4,300 digits.
    limit = int(match[1] + match[2]) if len(match[2]) <= 9 else 10**9
    if not 1 <= limit <= 100:
        raise Problem(422, f"validation failed: limit must be between 1 and 100, got {text[:20]}")
    return limit


def _boolean(query: Any, key: str) -> bool | None:
    text = _param(query, key)
    if text is None:
        return None
    if text not in _BOOLEANS:
        raise Problem(422, f"validation failed: {key} must be a boolean, got {text[:20]!r}")
    return _BOOLEANS[text]


def _since(text: str) -> str:
    """The store's bound for `updated_at > bound`, for every RFC 3339 date-time: year 0000 to
    9999, any offset up to ±23:59, any number of fractional digits, a leap second. A moment
    before every stamp the store can hold means everything, one after them all nothing."""
    # An unencoded '+hh:mm' offset arrives as a space; read it as the client meant it.
    text = re.sub(r" ([0-9]{2}:[0-9]{2})$", r"+\1", text)
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise Problem(400, "Invalid updated_since format: use RFC 3339, e.g. 2025-08-07T13:15:04Z")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, sign = match[7], match[8]
    off_hour, off_minute = int(match[9] or 0), int(match[10] or 0)
    try:
        # Year 0000 is valid RFC 3339 but not a `date`: take its twin 400 years on.
        days = date(year or 400, month, day).toordinal() - 1 - (0 if year else _DAYS_400_YEARS)
    except ValueError:
        raise Problem(400, "Invalid updated_since format: not a valid date") from None
    if hour > 23 or minute > 59 or second > 60 or off_hour > 23 or off_minute > 59:
        raise Problem(400, "Invalid updated_since format: not a valid time of day or offset")
    offset = off_hour * 60 + off_minute
    # Stamps have microseconds: cutting finer digits off keeps `>` exact. A leap second
    # (:60) comes after every microsecond of :59 and before the next minute.
    micro = int((fraction or "").ljust(6, "0")[:6])
    if second == 60:
        second, micro = 59, _US - 1
    moment = (((days * 24 + hour) * 60 + minute) * 60 + second) * _US + micro
    moment -= (-1 if sign == "-" else 1) * offset * 60 * _US
    if moment < 0:
        return _BEFORE_ALL
    if moment > _MAX_US:
        return _AFTER_ALL
    return format_stamp(_EPOCH + timedelta(microseconds=moment))


def _item(server: str, meta: str) -> str:
    return f'{{"server":{server},"_meta":{meta}}}'


def _list_body(items: list[ServedItem], metadata: dict[str, Any]) -> str:
    servers = ",".join(_item(server, meta) for _, _, server, meta in items)
    return f'{{"servers":[{servers}],"metadata":{json.dumps(metadata, separators=(",", ":"))}}}'


def json_response(body: str) -> web.Response:
    return web.Response(text=body, content_type="application/json")


async def list_servers(request: web.Request) -> web.Response:
    query = request.query
    limit = _limit(query)
    include_deleted = _boolean(query, "include_deleted")
    since = _param(query, "updated_since")
    if since is not None:
        if include_deleted is False:
            raise Problem(
                400,
                "Cannot set include_deleted=false when using updated_since "
                "(incremental sync requires deleted servers)",
            )
        include_deleted = True
    cursor = _param(query, "cursor")
    q = ListQuery(
        view=view_of(request),
        limit=limit,
        after=_decode_cursor(cursor) if cursor else None,
        search=_param(query, "search"),
        updated_since=_since(since) if since is not None else None,
        version=_param(query, "version"),
        include_deleted=bool(include_deleted),
    )
    rows = await request.app[READER].list_servers(q)
    page = rows[:limit]
    metadata: dict[str, Any] = {"count": len(page)}
    if len(rows) > limit:
        metadata["nextCursor"] = encode_cursor(page[-1][0], page[-1][1])
    return json_response(_list_body(page, metadata))


def _path_values(request: web.Request, key: str) -> list[str]:
    """What a path segment may mean, the official reading first. The official handler
    unescapes once more on top of the router's decoding (`%2541` means `A`); a segment that
    was encoded once and holds a literal `%XX` means itself, tried second."""
    once = request.match_info[key]
    twice = unquote(once)
    return [twice] if twice == once else [twice, once]


async def list_versions(request: web.Request) -> web.Response:
    include_deleted = bool(_boolean(request.query, "include_deleted"))
    for name in _path_values(request, "serverName"):
        rows = await request.app[READER].versions(
            view_of(request), name, include_deleted=include_deleted
        )
        if rows:
            return json_response(_list_body(rows, {"count": len(rows)}))
    raise Problem(404, "Server not found")


async def get_version(request: web.Request) -> web.Response:
    include_deleted = bool(_boolean(request.query, "include_deleted"))
    for name in _path_values(request, "serverName"):
        for version in _path_values(request, "version"):
            row = await request.app[READER].version(
                view_of(request), name, version, include_deleted=include_deleted
            )
            if row is not None:
                return json_response(_item(row[2], row[3]))
    raise Problem(404, "Server not found")


async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ping(_: web.Request) -> web.Response:
    return web.json_response({"pong": True})


async def version(_: web.Request) -> web.Response:
    return web.json_response(
        {
            "version": __version__,
            "git_commit": os.environ.get("SUBREGISTRY_GIT_COMMIT", "unknown"),
            "build_time": os.environ.get("SUBREGISTRY_BUILD_TIME", "unknown"),
        }
    )


_SPEC = resources.files("sync.serve").joinpath("openapi.yaml").read_bytes()


async def openapi(_: web.Request) -> web.Response:
    return web.Response(body=_SPEC, content_type="application/yaml")


async def read_only(_: web.Request) -> web.Response:
    return problem(405, "this registry is a read-only mirror", {"Allow": "GET, HEAD, OPTIONS"})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application) -> None:
    """The registry routes of every view, for both API prefixes: at the server's root (the
    default view when `api.base_path` is empty) and under any base (see `sync.serve.routing`)."""
    app[VIEW_ROUTES] = set()
    for base, tag in (("", ""), ("/" + BASE, "based_")):
        _add_view_routes(app, base, tag)


def _add_view_routes(app: web.Application, base_path: str, tag: str) -> None:
    router = app.router
    added: list[web.AbstractRoute] = []
    for prefix in PREFIXES:
        root = f"{base_path}{prefix}"
        reads: list[tuple[str, Handler, str | None]] = [
            ("/servers", list_servers, "servers"),
            (f"/servers/{_NAME}/versions", list_versions, "versions"),
            (f"/servers/{_NAME}/versions/{_VERSION}", get_version, "version"),
            ("/health", health, None),
            ("/ping", ping, None),
            ("/version", version, None),
        ]
        for path, handler, name in reads:
            # aiohttp route names are unique: the /v0 copy carries the prefix in its name.
            label = name if prefix == PREFIXES[0] or name is None else f"v0_{name}"
            label = tag + label if label is not None else None
            added.append(router.add_get(root + path, handler, name=label))
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                added.append(router.add_route(method, root + path, read_only))
        for path in (
            "/publish",
            "/validate",
            f"/servers/{_NAME}/status",
            f"/servers/{_NAME}/versions/{_VERSION}/status",
            "/auth/{provider}",
        ):
            added.append(router.add_route("*", root + path, read_only))
    added.append(router.add_get(f"{base_path}/openapi.yaml", openapi))
    from sync.serve.search import add_search_routes  # noqa: PLC0415 (it builds on this module)

    added += add_search_routes(app, base_path, tag)
    app[VIEW_ROUTES].update(route.resource.canonical for route in added if route.resource)
