"""Ranked search, an extension route: `GET {base}/v0.1/x/{namespace}/search?q=…`.

The official `search=` of `/v0.1/servers` is a literal substring filter in (name, version)
order, and stays so. This route answers "which servers are about this?": full-text over name,
title, description and package identifiers, most relevant first, every word a prefix, in the
official list envelope, each item's score in the mirror's own `_meta` key. The official
extensions convention puts such routes under `/v0.1/x/{reverse-DNS namespace}/`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sync.serve.api import CONFIG, LIVE, PREFIXES, READER, Problem, json_response
from sync.serve.routing import view_of
from sync.store import ListQuery, Reader, ServedItem
from sync.store.rank import RankedItem, words

__all__ = ["MAX_QUERY", "SearchPage", "add_search_routes", "find", "ranked_search"]

MAX_QUERY = 1000  # characters of `q`; a longer query is a 422, not a longer scan
_MAX_OFFSET = 100_000  # deeper than anyone pages; bounds the work a forged cursor can ask for
_BAD_CURSOR = "invalid cursor: pass back metadata.nextCursor of the same query unchanged"


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of ranked results: `items` best first, each a served item (name, version,
    server JSON, `_meta` JSON) with its score (higher is better; compare scores only within
    one backend), and `next_cursor` when more results exist (pass it back with the same
    query)."""

    items: list[RankedItem]
    next_cursor: str | None


def _query_tag(view: str, terms: Sequence[str], latest: bool) -> str:
    # Ties a cursor to its query: offsets of another query would silently skip or repeat.
    text = "\0".join((view, "latest" if latest else "all", *terms))
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _encode_cursor(offset: int, tag: str) -> str:
    return base64.urlsafe_b64encode(f"{offset}:{tag}".encode()).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str, tag: str) -> int:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cursor):
        raise Problem(400, _BAD_CURSOR)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Problem(400, _BAD_CURSOR) from None
    match = re.fullmatch(r"([0-9]{1,6}):([0-9a-f]{12})", raw)
    if match is None or match[2] != tag or int(match[1]) > _MAX_OFFSET:
        raise Problem(400, _BAD_CURSOR)
    return int(match[1])


async def ranked_search(
    reader: Reader,
    view: str,
    query: str,
    limit: int,
    cursor: str | None = None,
    *,
    latest: bool = True,
) -> SearchPage:
    """The page of `view`'s servers most relevant to `query` (free text: any string is safe,
    its letters-and-digits words are all required, each as a prefix), `limit` items from
    `cursor` on (None: the first page). Latest versions only unless `latest` is false;
    tombstones never. Raises `Problem(400)` for a cursor that is not this query's."""
    terms = words(query)
    tag = _query_tag(view, terms, latest)
    offset = _decode_cursor(cursor, tag) if cursor else 0
    rows = await reader.ranked(view, terms, limit + 1, offset, latest=latest)
    more = len(rows) > limit and offset + limit <= _MAX_OFFSET
    return SearchPage(rows[:limit], _encode_cursor(offset + limit, tag) if more else None)


async def find(reader: Reader, view: str, query: str, limit: int) -> list[ServedItem]:
    """The `limit` most relevant latest servers of `view` for `query` (for the web page and
    the MCP tools, which need no paging); a query without a word lists the latest servers
    by name, so an agent can browse a view."""
    if not words(query):
        rows = await reader.list_servers(ListQuery(view, limit, version="latest"))
        return rows[:limit]
    page = await ranked_search(reader, view, query, limit)
    return [item for item, _ in page.items]


def _param(request: web.Request, key: str) -> str | None:
    text: str | None = request.query.get(key)
    return text or None


def _limit(text: str | None) -> int:
    if text is None:
        return 30
    match = re.fullmatch(r"([+-]?)0*([0-9]{1,9})", text)
    limit = int(match[1] + match[2]) if match else 0
    if not 1 <= limit <= 100:
        raise Problem(422, f"validation failed: limit must be between 1 and 100, got {text[:20]!r}")
    return limit


def _with_score(meta: str, namespace: str, score: float) -> str:
    parsed: dict[str, Any] = json.loads(meta)
    own = parsed.get(namespace)
    parsed[namespace] = {**(own if isinstance(own, dict) else {}), "score": round(score, 6)}
    return json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))


async def search(request: web.Request) -> web.Response:
    query = _param(request, "q")
    if query is None or not query.strip():
        raise Problem(400, "q is required: the text to search for")
    if len(query) > MAX_QUERY:
        raise Problem(422, f"validation failed: q must be at most {MAX_QUERY} characters")
    limit = _limit(_param(request, "limit"))
    version = _param(request, "version") or "latest"
    if version not in ("latest", "all"):
        raise Problem(422, "validation failed: version must be 'latest' or 'all'")
    page = await ranked_search(
        request.app[READER],
        view_of(request),
        query,
        limit,
        _param(request, "cursor"),
        latest=version == "latest",
    )
    namespace = request.app[LIVE].config.mirror.namespace
    servers = ",".join(
        f'{{"server":{server},"_meta":{_with_score(meta, namespace, score)}}}'
        for (_, _, server, meta), score in page.items
    )
    metadata: dict[str, Any] = {"count": len(page.items)}
    if page.next_cursor is not None:
        metadata["nextCursor"] = page.next_cursor
    return json_response(f'{{"servers":[{servers}],"metadata":{json.dumps(metadata)}}}')


def add_search_routes(app: web.Application, base_path: str, tag: str) -> list[web.AbstractRoute]:
    """The search route under both API prefixes at `base_path` (see `api.add_routes`)."""
    namespace = app[CONFIG].mirror.namespace
    added: list[web.AbstractRoute] = []
    for prefix in PREFIXES:
        name = f"{tag}search" if prefix == PREFIXES[0] else f"{tag}v0_search"
        path = f"{base_path}{prefix}/x/{namespace}/search"
        added.append(app.router.add_get(path, search, name=name))
    return added
