"""Which version of a server is the latest, by the official registry's rule.

Semver (exactly three numeric parts, optional leading `v`, build metadata ignored) beats any
non-semver version; between two semvers the higher wins, and on equal precedence the first
published keeps the title (upstream never replaces `1.0.0+a` with `1.0.0+b`); between two
non-semvers the later `publishedAt` wins. The upstream does not re-send the previous latest
when it changes, so the mirror recomputes this itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

__all__ = ["Versioned", "latest_of", "parse_timestamp", "version_key"]

_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?$"
)


class Versioned(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def published_at(self) -> str | None: ...
    @property
    def status(self) -> str: ...


def parse_timestamp(value: str | None) -> float:
    """Seconds since the epoch for an RFC 3339 string; 0 for missing or unreadable values."""
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


_Key = tuple[object, ...]
T = TypeVar("T", bound="Versioned")


@functools.lru_cache(maxsize=65536)
def version_key(version: str, published_at: str | None) -> _Key:
    """A sort key whose maximum is the latest version (cached: every view of a name asks
    again for the same versions, and a reapply asks for every version)."""
    published = parse_timestamp(published_at)
    match = _SEMVER.match(version)
    if match is None:
        return (0, published)
    major, minor, patch, pre = match.groups()
    if pre is None:
        pre_key: tuple[object, ...] = (1,)
    else:
        pre_key = (0, *((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    return (1, int(major), int(minor), int(patch), pre_key, -published)


def latest_of(candidates: Iterable[T]) -> T | None:
    """The latest non-deleted candidate, else the latest deleted one, else None."""
    pool: Sequence[T] = list(candidates)
    live = [c for c in pool if c.status != "deleted"]
    pool = live or pool
    if not pool:
        return None
    return max(pool, key=lambda c: version_key(c.version, c.published_at))
