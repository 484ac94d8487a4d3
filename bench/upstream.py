"""A lean fake registry for benchmarks: the official list semantics over pre-rendered items.

Holds each item as the exact text it serves (so memory stays near the catalogue's size), keyed
and sorted by (name, version). `POST /_admin/touch?n=10` changes n entries now (for the
incremental benchmark); `GET /_admin/stats` counts list requests.
Usage: python bench/upstream.py CATALOGUE.jsonl PORT
"""

from __future__ import annotations

import bisect
import json
import sys
from datetime import UTC, datetime

from aiohttp import web


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Catalogue:
    def __init__(self, path: str) -> None:
        rows: list[tuple[tuple[str, str], str, str]] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                item = json.loads(line)
                server = item["server"]
                updated = item["_meta"]["io.modelcontextprotocol.registry/official"]["updatedAt"]
                rows.append(((server["name"], server["version"]), updated, line.rstrip("\n")))
        rows.sort()
        self.keys = [r[0] for r in rows]
        self.updated = [r[1] for r in rows]
        self.texts = [r[2] for r in rows]
        self.requests = 0

    def touch(self, n: int) -> None:
        step = max(1, len(self.keys) // n)
        for i in range(0, step * n, step):
            item = json.loads(self.texts[i])
            now = stamp()
            item["server"]["description"] = f"touched at {now}"
            item["_meta"]["io.modelcontextprotocol.registry/official"]["updatedAt"] = now
            self.texts[i] = json.dumps(item, separators=(",", ":"))
            self.updated[i] = now


async def list_servers(request: web.Request) -> web.Response:
    catalogue: Catalogue = request.app["catalogue"]
    catalogue.requests += 1
    query = request.query
    limit = int(query.get("limit", "30"))
    if not 1 <= limit <= 100:
        return web.json_response({"title": "Unprocessable Entity", "status": 422}, status=422)
    start = 0
    if cursor := query.get("cursor"):
        name, _, version = cursor.partition(":")
        start = bisect.bisect_right(catalogue.keys, (name, version))
    since = query.get("updated_since")
    since_time = datetime.fromisoformat(since) if since else None
    picked: list[int] = []
    for i in range(start, len(catalogue.keys)):
        if since_time is not None and datetime.fromisoformat(catalogue.updated[i]) <= since_time:
            continue
        picked.append(i)
        if len(picked) == limit:
            break
    metadata: dict[str, object] = {"count": len(picked)}
    if len(picked) == limit:
        metadata["nextCursor"] = ":".join(catalogue.keys[picked[-1]])
    body = (
        '{"servers":['
        + ",".join(catalogue.texts[i] for i in picked)
        + '],"metadata":'
        + json.dumps(metadata)
        + "}"
    )
    return web.Response(text=body, content_type="application/json")


async def touch(request: web.Request) -> web.Response:
    request.app["catalogue"].touch(int(request.query.get("n", "10")))
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"requests": request.app["catalogue"].requests})


def main() -> None:
    app = web.Application()
    app["catalogue"] = Catalogue(sys.argv[1])
    app.router.add_get("/v0.1/servers", list_servers)
    app.router.add_post("/_admin/touch", touch)
    app.router.add_get("/_admin/stats", stats)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)


if __name__ == "__main__":
    main()
