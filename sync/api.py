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
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from sync import __version__
from sync.cache import ResponseCache
from sync.config import Config
from sync.metrics import Metrics
from sync.store import ListQuery, Reader, format_stamp
from sync.store.reader import ServedItem

__all__ = [
    "CACHE",
    "CACHED_ROUTES",
    "CLOCK",
    "CONFIG",
    "METRICS",
    "READER",
    "VIEW",
    "Problem",
    "add_routes",
    "encode_cursor",
    "problem",
]

READER = web.AppKey("reader", Reader)
CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
VIEW = web.AppKey("view", str)
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
CACHE = web.AppKey("response_cache", ResponseCache)
# Route names whose 200 responses depend only on the store's content (and the URL).
CACHED_ROUTES = frozenset(
    {"servers", "versions", "version", "v0_servers", "v0_versions", "v0_version"}
)

PREFIXES = ("/v0.1", "/v0")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)
# strconv.ParseBool, which the official service (Go, huma) uses for booleans.
_BOOLEANS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
_TITLES = {
    400: "Bad Request",
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


def _limit(query: Any) -> int:
    text = query.get("limit")
    if text is None:
        return 30
    # ASCII digits only, as Go parses them: int() would also take "1_0", " 5" or Arabic digits.
    if not re.fullmatch(r"-?[0-9]{1,9}", text):
        raise Problem(422, f"validation failed: limit must be an integer, got {text!r}")
    limit = int(text)
    if not 1 <= limit <= 100:
        raise Problem(422, f"validation failed: limit must be between 1 and 100, got {limit}")
    return limit


def _boolean(query: Any, key: str) -> bool | None:
    text = query.get(key)
    if text is None:
        return None
    if text not in _BOOLEANS:
        raise Problem(422, f"validation failed: {key} must be a boolean, got {text!r}")
    return _BOOLEANS[text]


def _since(text: str) -> str:
    # An unencoded '+hh:mm' offset arrives as a space; read it as the client meant it.
    text = re.sub(r" (\d{2}:\d{2})$", r"+\1", text)
    if not _RFC3339.match(text):
        raise Problem(400, "Invalid updated_since format: use RFC 3339, e.g. 2025-08-07T13:15:04Z")
    text = re.sub(r"\.(\d{6})\d+", r".\1", text)  # Python reads at most microseconds
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise Problem(400, "Invalid updated_since format: not a valid date and time") from None
    return format_stamp(moment.astimezone(UTC))


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
    since = query.get("updated_since")
    if since is not None:
        if include_deleted is False:
            raise Problem(
                400,
                "Cannot set include_deleted=false when using updated_since "
                "(incremental sync requires deleted servers)",
            )
        include_deleted = True
    cursor = query.get("cursor")
    q = ListQuery(
        view=request.app[VIEW],
        limit=limit,
        after=_decode_cursor(cursor) if cursor else None,
        search=query.get("search") or None,
        updated_since=_since(since) if since is not None else None,
        version=query.get("version") or None,
        include_deleted=bool(include_deleted),
    )
    rows = await request.app[READER].list_servers(q)
    page = rows[:limit]
    metadata: dict[str, Any] = {"count": len(page)}
    if len(rows) > limit:
        metadata["nextCursor"] = encode_cursor(page[-1][0], page[-1][1])
    return json_response(_list_body(page, metadata))


def _path_value(request: web.Request, key: str) -> str:
    # The official handler unescapes once more on top of the router's own decoding.
    return unquote(request.match_info[key])


async def list_versions(request: web.Request) -> web.Response:
    name = _path_value(request, "serverName")
    include_deleted = bool(_boolean(request.query, "include_deleted"))
    rows = await request.app[READER].versions(
        request.app[VIEW], name, include_deleted=include_deleted
    )
    if not rows:
        raise Problem(404, "Server not found")
    return json_response(_list_body(rows, {"count": len(rows)}))


async def get_version(request: web.Request) -> web.Response:
    name = _path_value(request, "serverName")
    version = _path_value(request, "version")
    include_deleted = bool(_boolean(request.query, "include_deleted"))
    row = await request.app[READER].version(
        request.app[VIEW], name, version, include_deleted=include_deleted
    )
    if row is None:
        raise Problem(404, "Server not found")
    return json_response(_item(row[2], row[3]))


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


_SPEC = resources.files("sync").joinpath("openapi.yaml").read_bytes()


async def openapi(_: web.Request) -> web.Response:
    return web.Response(body=_SPEC, content_type="application/yaml")


async def read_only(_: web.Request) -> web.Response:
    return problem(405, "this registry is a read-only mirror", {"Allow": "GET, HEAD, OPTIONS"})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, base_path: str) -> None:
    """The registry routes, under `base_path`, for both API prefixes."""
    router = app.router
    for prefix in PREFIXES:
        root = f"{base_path}{prefix}"
        reads: list[tuple[str, Handler, str | None]] = [
            ("/servers", list_servers, "servers"),
            ("/servers/{serverName}/versions", list_versions, "versions"),
            ("/servers/{serverName}/versions/{version}", get_version, "version"),
            ("/health", health, None),
            ("/ping", ping, None),
            ("/version", version, None),
        ]
        for path, handler, name in reads:
            # aiohttp route names are unique: the /v0 copy carries the prefix in its name.
            label = name if prefix == PREFIXES[0] or name is None else f"v0_{name}"
            router.add_get(root + path, handler, name=label)
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                router.add_route(method, root + path, read_only)
        for path in (
            "/publish",
            "/validate",
            "/servers/{serverName}/status",
            "/servers/{serverName}/versions/{version}/status",
            "/auth/{provider}",
        ):
            router.add_route("*", root + path, read_only)
    router.add_get(f"{base_path}/openapi.yaml", openapi)
