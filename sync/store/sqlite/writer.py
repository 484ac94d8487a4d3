"""The one writer: raw upstream entries, pass checkpoints, quarantine and the served views.

A single aiosqlite connection in WAL mode; every transaction is `BEGIN IMMEDIATE` and
serialised by an asyncio lock, so concurrent passes of different upstreams never interleave
statements inside one another's transaction. A sidecar lock file keeps a second daemon off.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from sync.errors import StoreError, StoreLocked
from sync.store.sqlite.entries import EntryWrites
from sync.store.sqlite.passes import PassWrites
from sync.store.sqlite.schema import migrate
from sync.store.sqlite.served import ServedWrites
from sync.store.stamps import Stamps

__all__ = ["SqliteStore"]


def _lock(path: Path) -> int:
    try:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot open the lock file {path}.lock: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(
            f"{path} is in use by another subregistry process (lock {path}.lock); "
            "stop it first, or point this one at another storage.path"
        ) from None
    return fd


class SqliteStore(PassWrites, EntryWrites, ServedWrites):
    """Owns the writer connection. Create with `await Store.open(path)`."""

    def __init__(self, db: aiosqlite.Connection, path: Path, lock_fd: int | None) -> None:
        self._db = db
        self.path = path
        self._lock_fd = lock_fd
        self._tx = asyncio.Lock()
        self._stamps = Stamps()

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent}: {exc.strerror}") from None
        lock_fd = _lock(path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            os.close(lock_fd)
            raise StoreError(f"cannot open {path}: {exc}") from None
        store = cls(db, path, lock_fd)
        try:
            await db.execute("PRAGMA busy_timeout = 5000")
            async with db.execute("PRAGMA journal_mode = WAL") as cursor:
                mode = await cursor.fetchone()
            if mode is None or mode[0].lower() != "wal":
                raise StoreError(f"cannot switch {path} to WAL mode (got {mode})")
            await db.execute("PRAGMA synchronous = NORMAL")
            # 32 MB of page cache keeps the indexes of a 250,000-version mirror hot while a
            # full pass writes; memory stays bounded whatever the catalogue's size.
            await db.execute("PRAGMA cache_size = -32000")
            await db.execute("PRAGMA foreign_keys = ON")
            await migrate(db)
            async with db.execute("SELECT max(updated_at) FROM served") as cursor:
                row = await cursor.fetchone()
            if row and row[0]:
                store._stamps.after(row[0])
        except sqlite3.Error as exc:
            await store.close()
            raise StoreError(f"cannot prepare {path}: {exc}") from None
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def where(self) -> str:
        return str(self.path)

    async def close(self) -> None:
        try:
            await self._db.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One atomic unit of work; a cancelled or failed body leaves no trace.

        SQLite's own errors (disk full, read-only file, corruption) leave as StoreError, so
        callers never need to know the storage engine to handle them.
        """
        async with self._tx:
            # The statement runs on the connection's thread even if we are cancelled while
            # waiting for it: on cancellation wait for it, then undo it.
            begin = asyncio.ensure_future(self._db.execute("BEGIN IMMEDIATE"))
            try:
                await asyncio.shield(begin)
            except asyncio.CancelledError:
                with contextlib.suppress(sqlite3.Error):
                    await begin
                    await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot start a transaction: {exc}") from exc
            try:
                yield
                await asyncio.shield(self._db.execute("COMMIT"))
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.shield(self._db.execute("ROLLBACK"))
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{self.path}: {exc}") from exc
                raise

    def stamp(self) -> str:
        """A mirror timestamp strictly later than every one handed out before."""
        return self._stamps.next()

    async def integrity_check(self) -> str:
        async with self._db.execute("PRAGMA integrity_check") as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else "no answer"
