"""A served view, one server at a time, as the policy exporters and the doctor read it.

Rows come from `Reader.export` in (name, version) order, so one server's versions arrive
together: memory is bounded by one server's versions, whatever the size of the view. The
stored JSON is parsed defensively: the mirror serves upstream entries as published, so any
field may be missing or of the wrong type.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sync.model import OFFICIAL
from sync.store import Reader, ServedItem

__all__ = ["Remote", "ServedVersion", "ServerGroup", "groups", "version_of"]


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _loads(text: str) -> dict[str, Any]:
    try:
        return _object(json.loads(text))
    except ValueError:
        return {}


@dataclass(frozen=True, slots=True)
class Remote:
    """A hosted endpoint of a version: its transport type and URL as published (which may hold
    `{variable}` templates, see `sync.policy.templates`)."""

    type: str
    url: str


@dataclass(frozen=True, slots=True)
class ServedVersion:
    """One row of a served view."""

    name: str
    version: str
    status: str  # active | deprecated | deleted (the served status, after curation)
    is_latest: bool
    published_at: str
    server: dict[str, Any]  # parsed server.json ({} when unreadable)
    server_text: str  # the stored bytes, passed through by exporters that copy entries
    meta_text: str

    @property
    def remotes(self) -> list[Remote]:
        return [
            Remote(_text(r.get("type")), _text(r.get("url")))
            for r in _objects(self.server.get("remotes"))
            if _text(r.get("url"))
        ]

    @property
    def packages(self) -> list[dict[str, Any]]:
        return _objects(self.server.get("packages"))

    @property
    def description(self) -> str:
        return _text(self.server.get("description"))

    @property
    def title(self) -> str:
        return _text(self.server.get("title"))


def version_of(item: ServedItem) -> ServedVersion:
    name, version, server_text, meta_text = item
    official = _object(_loads(meta_text).get(OFFICIAL))
    return ServedVersion(
        name=name,
        version=version,
        status=_text(official.get("status")) or "active",
        is_latest=official.get("isLatest") is True,
        published_at=_text(official.get("publishedAt")),
        server=_loads(server_text),
        server_text=server_text,
        meta_text=meta_text,
    )


@dataclass(frozen=True, slots=True)
class ServerGroup:
    """Every served row of one name (tombstones too), in version order."""

    name: str
    versions: tuple[ServedVersion, ...]

    def allowed(self, *, include_deprecated: bool) -> list[ServedVersion]:
        """What an allowlist admits: active versions, and deprecated ones when asked; deleted
        versions never."""
        ok = {"active", "deprecated"} if include_deprecated else {"active"}
        return [v for v in self.versions if v.status in ok]

    def refused(self, *, include_deprecated: bool) -> list[ServedVersion]:
        """The rest: deleted versions, and deprecated ones unless they are admitted."""
        ok = {"active", "deprecated"} if include_deprecated else {"active"}
        return [v for v in self.versions if v.status not in ok]

    def current(self, *, include_deprecated: bool) -> ServedVersion | None:
        """The version that stands for the server: the served latest when admitted, else the
        admitted version published last (None when nothing is admitted)."""
        allowed = self.allowed(include_deprecated=include_deprecated)
        for v in allowed:
            if v.is_latest:
                return v
        return max(allowed, key=lambda v: (v.published_at, v.version), default=None)


async def groups(reader: Reader, view: str) -> AsyncIterator[ServerGroup]:
    """Every name of `view` with its rows, in name order."""
    name: str | None = None
    rows: list[ServedVersion] = []
    async for item in reader.export(view):
        if item[0] != name:
            if name is not None:
                yield ServerGroup(name, tuple(rows))
            name, rows = item[0], []
        rows.append(version_of(item))
    if name is not None:
        yield ServerGroup(name, tuple(rows))
