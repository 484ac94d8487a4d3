"""A fake MCP registry with the official service's list semantics, for tests and benchmarks.

It keeps the catalogue in memory and serves `GET /v0.1/servers` (and `/v0/servers`) exactly as
the Go service does where a mirror can tell: (name, version) text order, `name:version` cursors,
`updated_since` strictly after and forcing deleted rows in, `include_deleted`, `version=latest`,
limit 1..100 else 422, `nextCursor` whenever a page is full (the off-by-one quirk), and Go's
JSON encoding (compact, with `<`, `>` and `&` escaped) so byte-exact storage can be checked.
`isLatest` flips do not bump `updatedAt`, as upstream. Faults are queued per request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from sync.curate.versions import version_key

OFFICIAL = "io.modelcontextprotocol.registry/official"
Fault = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


def go_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def go_time(moment: datetime) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


@dataclass
class Row:
    server: dict[str, Any]
    official: dict[str, Any]
    extra_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.server.get("name", "")), str(self.server.get("version", "")))

    def server_text(self) -> str:
        return go_json(self.server)

    def meta(self) -> dict[str, Any]:
        return {OFFICIAL: self.official, **self.extra_meta}

    def item_text(self) -> str:
        return f'{{"server":{self.server_text()},"_meta":{go_json(self.meta())}}}'


class FakeRegistry:
    def __init__(self, items: list[dict[str, Any]] | None = None) -> None:
        self.rows: dict[tuple[str, str], Row] = {}
        for item in items or []:
            row = Row(item["server"], dict(item["_meta"][OFFICIAL]))
            self.rows[row.key] = row
        self.requests: list[dict[str, str]] = []
        self.user_agents: set[str] = set()
        self.faults: list[Fault] = []
        self.after_page: Callable[[int], Awaitable[None] | None] | None = None
        self.page_delay = 0.0
        self.repeat_across_pages = False
        self.date: datetime | None = None
        self._tick = datetime(2026, 11, 1, tzinfo=UTC)

    # --- catalogue changes, with the official timestamp rules ------------------------------

    def now(self) -> datetime:
        self._tick = max(self._tick + timedelta(milliseconds=1), datetime.now(UTC))
        return self._tick

    def publish(self, server: dict[str, Any]) -> Row:
        stamp = go_time(self.now())
        name = server["name"]
        current = [r for r in self.rows.values() if r.key[0] == name and r.official["isLatest"]]
        row = Row(
            server,
            {"status": "active", "publishedAt": stamp, "updatedAt": stamp, "isLatest": False},
        )
        new_key = version_key(server["version"], stamp)
        if not current or new_key > version_key(
            current[0].key[1], current[0].official["publishedAt"]
        ):
            for old in current:
                old.official["isLatest"] = False  # upstream does not bump updatedAt here
            row.official["isLatest"] = True
        self.rows[row.key] = row
        return row

    def set_status(self, name: str, version: str, status: str, message: str | None = None) -> None:
        row = self.rows[(name, version)]
        stamp = go_time(self.now())
        if row.official["status"] != status:
            row.official["statusChangedAt"] = stamp
        row.official["status"] = status
        if message:
            row.official["statusMessage"] = message
        else:
            row.official.pop("statusMessage", None)
        row.official["updatedAt"] = stamp

    def add_raw(self, server: dict[str, Any]) -> Row:
        """Insert an entry as-is, bypassing every rule (for poison entries)."""
        stamp = go_time(self.now())
        row = Row(
            server, {"status": "active", "publishedAt": stamp, "updatedAt": stamp, "isLatest": True}
        )
        self.rows[row.key] = row
        return row

    def edit(self, name: str, version: str, **changes: Any) -> None:
        row = self.rows[(name, version)]
        row.server = {**row.server, **changes}
        row.official["updatedAt"] = go_time(self.now())

    # --- HTTP ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        for prefix in ("/v0.1", "/v0"):
            app.router.add_get(f"{prefix}/servers", self.list_servers)
        return app

    def fail(
        self, status: int, body: str = "", headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        async def fault(_: web.Request) -> web.StreamResponse:
            return web.Response(
                status=status,
                text=body,
                headers=headers,
                content_type="text/html" if body.startswith("<") else None,
            )

        self.faults.extend([fault] * times)

    def slow(self, seconds: float, times: int = 1) -> None:
        """The next responses take `seconds` before anything is sent."""

        async def fault(_: web.Request) -> None:
            await asyncio.sleep(seconds)

        self.faults.extend([fault] * times)

    def truncate(self, times: int = 1) -> None:
        """Promise a long body, send a little of it, then drop the connection."""

        async def fault(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(
                headers={"Content-Type": "application/json", "Content-Length": "100000"}
            )
            await response.prepare(request)
            await response.write(b'{"servers":[{"server":{"name":"io.github.a/b"')
            assert request.transport is not None
            request.transport.close()
            return response

        self.faults.extend([fault] * times)

    def redirect(self, location: str, times: int = 1) -> None:
        async def fault(_: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(location)

        self.faults.extend([fault] * times)

    async def list_servers(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append(query)
        self.user_agents.add(request.headers.get("User-Agent", ""))
        if self.faults:
            response = await self.faults.pop(0)(request)
            if response is not None:
                return response
        if self.page_delay:
            await asyncio.sleep(self.page_delay)
        try:
            limit = int(query.get("limit", "30"))
        except ValueError:
            limit = -1
        if not 1 <= limit <= 100:
            return web.json_response(
                {"title": "Unprocessable Entity", "status": 422, "detail": "validation failed"},
                status=422,
            )
        include_deleted = query.get("include_deleted") == "true"
        since = None
        if "updated_since" in query:
            try:
                since = datetime.fromisoformat(query["updated_since"])
            except ValueError:
                return web.json_response({"title": "Bad Request", "status": 400}, status=400)
            include_deleted = True
        rows = sorted(self.rows.values(), key=lambda r: r.key)
        cursor = query.get("cursor")
        if cursor:
            name, _, version = cursor.partition(":")
            # `repeat_across_pages` serves each page's first row again on the next page, as a
            # cache or a row updated mid-pass can make a real upstream do.
            rows = [
                r
                for r in rows
                if r.key >= (name, version)
                and (self.repeat_across_pages or r.key > (name, version))
            ]
        selected = []
        for row in rows:
            if not include_deleted and row.official["status"] == "deleted":
                continue
            if since and datetime.fromisoformat(row.official["updatedAt"]) <= since:
                continue
            if query.get("version") == "latest" and not row.official["isLatest"]:
                continue
            selected.append(row)
            if len(selected) == limit:
                break
        metadata: dict[str, Any] = {"count": len(selected)}
        if len(selected) == limit:
            metadata["nextCursor"] = ":".join(selected[-1].key)
        body = '{"servers":[' + ",".join(r.item_text() for r in selected) + "]"
        body += ',"metadata":' + json.dumps(metadata) + "}"
        headers = {"Content-Type": "application/json"}
        if self.date is not None:
            headers["Date"] = self.date.strftime("%a, %d %b %Y %H:%M:%S GMT")
        response = web.Response(text=body, headers=headers)
        if self.after_page is not None:
            outcome = self.after_page(len(self.requests))
            if outcome is not None:
                await outcome
        return response
