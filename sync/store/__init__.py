"""Everything SQL lives in this package: the writer, the read-only readers, the schema."""

from __future__ import annotations

from sync.store.reader import ListQuery, Reader
from sync.store.records import (
    ExistingServed,
    PassCounts,
    PassRecord,
    QuarantineRecord,
    ServedRow,
    StoredEntry,
    UpstreamState,
    format_stamp,
    utcnow,
)
from sync.store.writer import Store

__all__ = [
    "ExistingServed",
    "ListQuery",
    "PassCounts",
    "PassRecord",
    "QuarantineRecord",
    "Reader",
    "ServedRow",
    "Store",
    "StoredEntry",
    "UpstreamState",
    "format_stamp",
    "utcnow",
]
