"""The catalogue as web pages, for people: browse and search a view, a server's versions and
provenance, and the upstreams' health. Read-only, server-rendered, over the same reader as the
API, at every view's base path and behind that view's auth (the routes are view routes).

Everything from upstream is hostile input: Jinja2 autoescapes every value, only http(s) URLs
become links (`sync.serve.pages.facts`), and each HTML response carries a Content-Security-Policy
that allows nothing but the mirror's own assets, so the page works air-gapped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web

from sync import __version__
from sync.curate.explain import explain
from sync.model import STATUSES
from sync.serve.api import LIVE, READER, encode_cursor
from sync.serve.pages.facts import ServerFacts, facts_of
from sync.serve.routing import BASE, VIEW_ROUTES, base_of, guards_default, view_of
from sync.serve.search import find
from sync.store import ListQuery, Reader

__all__ = ["CSP", "PAGE_SIZE", "add_page_routes", "find"]

PAGE_SIZE = 20
SEARCH_LIMIT = 100  # a search shows its best matches, paged
_BATCH = 100
# Rows one browse request reads at most while filters skip rows: a rare filter value costs a
# bounded read per page, and the page's "next" link continues from where the scan stopped.
MAX_SCAN = 2000
_TRAIL = 50  # previous pages a "back" link can reach
_START = "."  # the first page, in a trail of cursors (never a base64url cursor)
REGISTRY_TYPES = ("npm", "pypi", "oci", "nuget", "mcpb")
TRANSPORTS = ("stdio", "streamable-http", "sse", "remote")
CSP = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'"
)
STATIC_PATH = "/ui/static"
_STATIC = Path(str(resources.files("sync.serve") / "static"))


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True, slots=True)
class Filters:
    status: str = ""
    registry: str = ""
    transport: str = ""
    upstream: str = ""

    def accepts(self, item: ServerFacts) -> bool:
        if self.status and item.status != self.status:
            return False
        if self.registry and self.registry not in item.registry_types:
            return False
        if self.transport == "remote":
            if not item.remote:
                return False
        elif self.transport and self.transport not in item.transports:
            return False
        return not self.upstream or item.upstream == self.upstream

    def params(self) -> dict[str, str]:
        pairs = (
            ("status", self.status),
            ("registry", self.registry),
            ("transport", self.transport),
            ("upstream", self.upstream),
        )
        return {k: v for k, v in pairs if v}


def _choice(query: Mapping[str, str], key: str, allowed: tuple[str, ...] | frozenset[str]) -> str:
    value = query.get(key, "")
    if value and value not in allowed:
        raise PageError(400, f"unknown {key} {value[:40]!r}: choose one of the listed values")
    return value


def _filters(query: Mapping[str, str], upstreams: tuple[str, ...]) -> Filters:
    return Filters(
        status=_choice(query, "status", STATUSES),
        registry=_choice(query, "registry", REGISTRY_TYPES),
        transport=_choice(query, "transport", TRANSPORTS),
        upstream=_choice(query, "upstream", upstreams),
    )


def _decode(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise PageError(400, "invalid cursor: follow the page's own links") from None
    name, sep, version = raw.partition(":")
    if not sep or not name:
        raise PageError(400, "invalid cursor: follow the page's own links")
    return name, version


async def _browse(
    reader: Reader, view: str, namespace: str, filters: Filters, after: tuple[str, str] | None
) -> tuple[list[ServerFacts], tuple[str, str] | None]:
    """One page of the view in the API's (name, version) order, and where the next starts.

    Latest versions, unless a status is asked for: then every version with that status (a
    deprecated or withdrawn version is rarely the latest)."""
    shown: list[ServerFacts] = []
    position, scanned = after, 0
    version = None if filters.status else "latest"
    include_deleted = filters.status == "deleted"
    while scanned < MAX_SCAN:
        rows = await reader.list_servers(
            ListQuery(view, _BATCH, position, version=version, include_deleted=include_deleted)
        )
        batch = rows[:_BATCH]
        for index, row in enumerate(batch):
            scanned += 1
            position = (row[0], row[1])
            facts = facts_of(row, namespace)
            if filters.accepts(facts):
                shown.append(facts)
                if len(shown) == PAGE_SIZE:
                    more = index < len(batch) - 1 or len(rows) > _BATCH
                    return shown, position if more else None
        if len(rows) <= _BATCH:
            return shown, None
    return shown, position


def _url(path: str, params: Mapping[str, str]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def _home(request: web.Request) -> str:
    return base_of(request) or "/"


async def catalogue(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
    config, reader, view = request.app[LIVE].config, request.app[READER], view_of(request)
    upstreams = tuple(u.name for u in config.upstreams)
    query = request.query
    filters = _filters(query, upstreams)
    text = query.get("q", "").strip()[:200]
    home = _home(request)
    namespace = config.mirror.namespace
    prev_url = next_url = None
    if text:
        try:
            start = max(0, int(query.get("start", "0")))
        except ValueError:
            raise PageError(400, "start must be a number") from None
        hits = [facts_of(h, namespace) for h in await find(reader, view, text, SEARCH_LIMIT)]
        matching = [h for h in hits if filters.accepts(h)]
        shown = matching[start : start + PAGE_SIZE]
        params = {"q": text, **filters.params()}
        if start > 0:
            prev_url = _url(home, {**params, "start": str(max(0, start - PAGE_SIZE))})
        if start + PAGE_SIZE < len(matching):
            next_url = _url(home, {**params, "start": str(start + PAGE_SIZE)})
    else:
        cursor = query.get("cursor", "")
        trail = [c for c in query.get("trail", "").split(",") if c][-_TRAIL:]
        after = _decode(cursor) if cursor and cursor != _START else None
        shown, following = await _browse(reader, view, namespace, filters, after)
        params = filters.params()
        if after is not None:
            back = trail[-1] if trail else _START
            back_params = {**params, "trail": ",".join(trail[:-1])} if trail[:-1] else params
            prev_url = _url(
                home, {**back_params, "cursor": back} if back != _START else back_params
            )
        if following is not None:
            here = [*trail, cursor or _START][-_TRAIL:] if after is not None else [_START]
            next_url = _url(
                home, {**params, "cursor": encode_cursor(*following), "trail": ",".join(here)}
            )
    return _render(
        request,
        "catalogue.html",
        {
            "q": text,
            "filters": filters,
            "servers": shown,
            "prev_url": prev_url,
            "next_url": next_url,
            # A page cut short by the scan budget, not by the end of the catalogue.
            "partial": next_url is not None and len(shown) < PAGE_SIZE,
            "statuses": sorted(STATUSES),
            "registry_types": REGISTRY_TYPES,
            "transports": TRANSPORTS,
            "upstreams": upstreams,
        },
    )


async def server_page(request: web.Request) -> web.StreamResponse:
    config, reader, view = request.app[LIVE].config, request.app[READER], view_of(request)
    name = request.match_info["serverName"]
    rows = await reader.versions(view, name, include_deleted=True)
    if not rows:
        raise PageError(404, "this view serves no server by that name")
    versions = [facts_of(row, config.mirror.namespace) for row in rows]
    latest = next((v for v in versions if v.is_latest), versions[0])
    # The report tells what the default view holds: not for this view's readers when the
    # default view has its own auth (as the MCP tool refuses it).
    entries = [] if guards_default(config, view) else await reader.entries_for([name])
    report = explain(config, entries, None, view) if entries else None
    return _render(
        request,
        "server.html",
        {"server": latest, "versions": versions, "report": report, "named_view": view},
    )


async def status_page(request: web.Request) -> web.StreamResponse:
    config, reader, view = request.app[LIVE].config, request.app[READER], view_of(request)
    states = await reader.upstream_states()
    quarantine = await reader.quarantine()
    upstreams = []
    # The upstreams' passes and quarantine describe the whole mirror, the default view's
    # holdings included: only its counts for a view whose readers may not see those.
    for upstream in () if guards_default(config, view) else config.upstreams:
        upstreams.append(
            {
                "name": upstream.name,
                "state": states.get(upstream.name),
                "passes": await reader.passes(upstream.name, limit=10),
                "quarantine": [q for q in quarantine if q.upstream == upstream.name],
            }
        )
    counts, servers = await reader.served_counts(view)
    return _render(
        request, "status.html", {"upstreams": upstreams, "counts": counts, "servers": servers}
    )


def _render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.StreamResponse:
    home = _home(request)
    base = base_of(request) or ""
    context |= {
        "home": home,
        "base": base,
        "view": view_of(request),
        "version": __version__,
        "status_url": f"{base}/ui/status",
    }
    return aiohttp_jinja2.render_template(template, request, context, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _html_errors(handler: Handler) -> Handler:
    """A page's own errors as a page (a person reads them), with the status they carry."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except PageError as exc:
            return _render(
                request, "error.html", {"status": exc.status, "message": exc.message}, exc.status
            )

    return run


def _server_url(base: str, name: str) -> str:
    return f"{base}/ui/servers/{quote(name, safe='')}"


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """CSP on every HTML response (set here: the ETag middleware rebuilds responses), and
    long caching for fingerprinted assets."""
    if response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
    elif request.path.startswith(STATIC_PATH + "/") and response.status in (200, 304):
        response.headers["Cache-Control"] = (
            "public, max-age=31536000, immutable" if "v" in request.query else "public, max-age=300"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"


def add_page_routes(app: web.Application) -> None:
    """The pages of every view, at the root (the default view when `api.base_path` is empty)
    and under any base. Call it after every other view route: `/{base}` alone matches any
    path, so a view route registered after it would never be reached."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("sync.serve", "templates"),
        autoescape=jinja2.select_autoescape(default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    digests = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in _STATIC.iterdir()
        if p.is_file()
    }
    env.globals["asset"] = lambda name: f"{STATIC_PATH}/{name}?v={digests[name]}"
    env.globals["server_url"] = _server_url
    app.router.add_static(STATIC_PATH, _STATIC, follow_symlinks=False, show_index=False)
    app.on_response_prepare.append(_headers)
    router, added = app.router, []
    for base in ("", "/" + BASE):
        added.append(
            router.add_get(f"{base}/ui/servers/{{serverName:[^/]+}}", _html_errors(server_page))
        )
        added.append(router.add_get(f"{base}/ui/status", _html_errors(status_page)))
    added.append(router.add_get("/", _html_errors(catalogue)))
    added.append(router.add_route("*", "/" + BASE, _html_errors(catalogue)))
    app[VIEW_ROUTES].update(route.resource.canonical for route in added if route.resource)
