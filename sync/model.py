"""The domain types every layer shares: no I/O, no imports from the project.

An upstream entry as read off the wire (`Entry`) or refused (`Rejected`), as the store holds it
(`StoredEntry`), and a version of a served view (`ServedRow`, `ExistingServed`); the official
registry's `_meta` key; the mirror's own timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

__all__ = [
    "OFFICIAL",
    "STATUSES",
    "Entry",
    "ExistingServed",
    "Rejected",
    "ServedRow",
    "StoredEntry",
    "format_stamp",
    "utcnow",
]

OFFICIAL = "io.modelcontextprotocol.registry/official"
STATUSES = frozenset({"active", "deprecated", "deleted"})

_ZERO = timedelta(0)


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_stamp(moment: datetime) -> str:
    """The mirror's own timestamps: fixed width, so text order is time order in SQL."""
    if moment.utcoffset() != _ZERO:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class Entry(NamedTuple):
    """One upstream server version: raw text as received plus the facts the mirror indexes."""

    name: str
    version: str
    server: str
    meta: str | None
    status: str
    status_message: str | None
    status_changed_at: str | None
    published_at: str | None
    updated_at: str | None
    description: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """An entry that cannot be mirrored, and why; it goes to quarantine, not to the mirror."""

    key: str
    reason: str
    raw: str


class StoredEntry(NamedTuple):
    """An upstream entry as the mirror holds it, raw JSON text included."""

    id: int
    upstream: str
    name: str
    version: str
    server: str
    meta: str | None
    status: str
    status_message: str | None
    status_changed_at: str | None
    published_at: str | None
    upstream_updated_at: str | None
    description: str
    stored_at: str
    first_seen_at: str
    removed_at: str | None


class ExistingServed(NamedTuple):
    """What a served row was, enough to tell whether a rebuilt row differs."""

    entry_id: int
    form: bytes


class ServedRow(NamedTuple):
    """One (name, version) of a served view, ready to be written."""

    name: str
    version: str
    entry_id: int
    upstream: str
    status: str
    is_latest: bool
    published_ts: float
    description: str
    form: bytes
    meta: str
