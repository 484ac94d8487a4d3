"""Everything SQL lives in this package: an interface, its records, and one sub-package per
backend (`sqlite`, the embedded default; `postgres`, shared by replicas)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sync.store.interface import Reader, Store
from sync.store.records import (
    ListQuery,
    PassCounts,
    PassRecord,
    QuarantineRecord,
    ServedItem,
    UpstreamState,
)
from sync.store.sqlite.reader import SqliteReader
from sync.store.sqlite.writer import SqliteStore

if TYPE_CHECKING:
    from sync.config import StorageConfig

__all__ = [
    "ListQuery",
    "PassCounts",
    "PassRecord",
    "QuarantineRecord",
    "Reader",
    "ServedItem",
    "Store",
    "UpstreamState",
    "open_reader",
    "open_store",
]


async def open_store(storage: StorageConfig) -> Store:
    """The writer of the configured store, its schema migrated. A PostgreSQL writer does not
    lead until elected (`PostgresStore.lead`): its transactions raise NotLeader until then."""
    if storage.url is not None:
        # Imported here: a SQLite daemon never pays for importing psycopg.
        from sync.store.postgres.writer import PostgresStore  # noqa: PLC0415

        return await PostgresStore.open(storage)
    return await SqliteStore.open(storage.path)


async def open_reader(storage: StorageConfig, *, connections: int | None = None) -> Reader:
    """Read-only access to the configured store."""
    if storage.url is not None:
        # Imported here: a SQLite daemon never pays for importing psycopg.
        from sync.store.postgres.reader import PostgresReader  # noqa: PLC0415

        return await PostgresReader.open(storage, connections=connections)
    return await SqliteReader.open(storage.path, connections=connections or 2)
