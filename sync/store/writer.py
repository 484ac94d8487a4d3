"""The one writer: raw upstream entries, pass checkpoints, quarantine and the served views.

A single aiosqlite connection in WAL mode; every transaction is `BEGIN IMMEDIATE` and
serialised by an asyncio lock, so concurrent passes of different upstreams never interleave
statements inside one another's transaction. A sidecar lock file keeps a second daemon off.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

import aiosqlite

from sync.errors import StoreError, StoreLocked
from sync.store.records import (
    ExistingServed,
    PassCounts,
    ServedRow,
    StoredEntry,
    UpstreamState,
    format_stamp,
    utcnow,
)
from sync.store.schema import migrate
from sync.wire import Entry, Rejected

__all__ = ["Store"]

_ENTRY_COLUMNS = (
    "id, upstream, name, version, server, meta, status, status_message, status_changed_at, "
    "published_at, upstream_updated_at, description, stored_at, first_seen_at, removed_at"
)
_STATE_COLUMNS = (
    "name, checkpoint, last_full_at, last_success_at, last_error, last_error_at, failures, "
    "circuit_until, pass_id, pass_mode, pass_started, pass_since, pass_cursor, pass_sweep, "
    "source_digest"
)
# SQLite allows 32766 bound parameters; stay far below it per statement.
_CHUNK = 500


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _lock(path: Path) -> int:
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(
            f"{path} is in use by another subregistry process (lock {path}.lock); "
            "stop it first, or point this one at another storage.path"
        ) from None
    return fd


class Store:
    """Owns the writer connection. Create with `await Store.open(path)`."""

    def __init__(self, db: aiosqlite.Connection, path: Path, lock_fd: int | None) -> None:
        self._db = db
        self.path = path
        self._lock_fd = lock_fd
        self._tx = asyncio.Lock()
        self._last_stamp = utcnow()

    @classmethod
    async def open(cls, path: Path) -> Store:
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
            await db.execute("PRAGMA foreign_keys = ON")
            await migrate(db)
            async with db.execute("SELECT max(updated_at) FROM served") as cursor:
                row = await cursor.fetchone()
            if row and row[0]:
                store._last_stamp = max(store._last_stamp, datetime.fromisoformat(row[0]))
        except sqlite3.Error as exc:
            await store.close()
            raise StoreError(f"cannot prepare {path}: {exc}") from None
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        try:
            await self._db.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One atomic unit of work; a cancelled or failed body leaves no trace."""
        async with self._tx:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            await asyncio.shield(self._db.execute("COMMIT"))

    def stamp(self) -> str:
        """A mirror timestamp strictly later than every one handed out before."""
        now = utcnow()
        if now <= self._last_stamp:
            now = self._last_stamp + timedelta(microseconds=1)
        self._last_stamp = now
        return format_stamp(now)

    async def integrity_check(self) -> str:
        async with self._db.execute("PRAGMA integrity_check") as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else "no answer"

    # --- upstream state and passes -------------------------------------------------------

    async def state(self, upstream: str) -> UpstreamState:
        await self._db.execute("INSERT OR IGNORE INTO upstreams (name) VALUES (?)", (upstream,))
        async with self._db.execute(
            f"SELECT {_STATE_COLUMNS} FROM upstreams WHERE name = ?", (upstream,)
        ) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return UpstreamState(*row)

    async def close_interrupted(
        self, now: str, reason: str = "process stopped before the pass completed"
    ) -> int:
        """Passes still marked running were stopped, or belong to a process that died."""
        cursor = await self._db.execute(
            "UPDATE passes SET outcome = 'interrupted', ended_at = ?, error = ? "
            "WHERE outcome = 'running'",
            (now, reason),
        )
        return cursor.rowcount

    async def start_pass(
        self,
        upstream: str,
        *,
        mode: str,
        started: str,
        since: str | None,
        cursor: str | None,
        sweep: int | None,
        resumed_from: int | None,
        now: str,
    ) -> int:
        inserted = await self._db.execute(
            "INSERT INTO passes (upstream, mode, started_at, outcome, resumed_from) "
            "VALUES (?, ?, ?, 'running', ?)",
            (upstream, mode, now, resumed_from),
        )
        pass_id = inserted.lastrowid
        assert pass_id is not None
        await self._db.execute(
            "UPDATE upstreams SET pass_id = ?, pass_mode = ?, pass_started = ?, pass_since = ?, "
            "pass_cursor = ?, pass_sweep = ? WHERE name = ?",
            (pass_id, mode, started, since, cursor, sweep if sweep else pass_id, upstream),
        )
        return pass_id

    async def set_pass_started(self, upstream: str, started: str) -> None:
        await self._db.execute(
            "UPDATE upstreams SET pass_started = ? WHERE name = ?", (started, upstream)
        )

    async def record_page(
        self, upstream: str, pass_id: int, cursor: str | None, counts: PassCounts
    ) -> None:
        """Checkpoint the cursor in the same transaction as the page it follows."""
        await self._db.execute(
            "UPDATE upstreams SET pass_cursor = ? WHERE name = ?", (cursor, upstream)
        )
        await self._db.execute(
            "UPDATE passes SET pages = pages + ?, inserted = inserted + ?, updated = updated + ?, "
            "unchanged = unchanged + ?, removed = removed + ?, quarantined = quarantined + ? "
            "WHERE id = ?",
            (
                counts.pages,
                counts.inserted,
                counts.updated,
                counts.unchanged,
                counts.removed,
                counts.quarantined,
                pass_id,
            ),
        )

    async def finish_pass(
        self,
        upstream: str,
        pass_id: int,
        *,
        checkpoint: str | None,
        full: bool,
        now: str,
        source_digest: str | None = None,
    ) -> None:
        await self._db.execute(
            "UPDATE passes SET outcome = 'ok', ended_at = ?, checkpoint = ? WHERE id = ?",
            (now, checkpoint, pass_id),
        )
        await self._db.execute(
            "UPDATE upstreams SET checkpoint = coalesce(?, checkpoint), last_success_at = ?, "
            "last_full_at = CASE WHEN ? THEN pass_started ELSE last_full_at END, "
            "failures = 0, circuit_until = NULL, last_error = NULL, last_error_at = NULL, "
            "pass_id = NULL, pass_mode = NULL, pass_started = NULL, pass_since = NULL, "
            "pass_cursor = NULL, pass_sweep = NULL, "
            "source_digest = coalesce(?, source_digest) WHERE name = ?",
            (checkpoint, now, full, source_digest, upstream),
        )

    async def fail_pass(
        self, upstream: str, pass_id: int | None, *, error: str, now: str, circuit_until: str | None
    ) -> None:
        """Record a failed pass; its resume point (cursor, start, sweep) is kept."""
        if pass_id is not None:
            await self._db.execute(
                "UPDATE passes SET outcome = 'failed', ended_at = ?, error = ? WHERE id = ?",
                (now, error, pass_id),
            )
        await self._db.execute(
            "UPDATE upstreams SET failures = failures + 1, last_error = ?, last_error_at = ?, "
            "circuit_until = ? WHERE name = ?",
            (error, now, circuit_until, upstream),
        )

    async def record_skip(self, upstream: str, *, mode: str, reason: str, now: str) -> None:
        await self._db.execute(
            "INSERT INTO passes (upstream, mode, started_at, ended_at, outcome, error) "
            "VALUES (?, ?, ?, ?, 'skipped', ?)",
            (upstream, mode, now, now, reason),
        )

    # --- raw entries ----------------------------------------------------------------------

    async def upsert_entries(
        self, upstream: str, entries: Sequence[Entry], *, sweep: int, now: str
    ) -> tuple[PassCounts, set[str]]:
        """Store a page of entries idempotently; return counts and the names that changed."""
        counts = PassCounts()
        touched: set[str] = set()
        if not entries:
            return counts, touched
        names = sorted({e.name for e in entries})
        known: dict[tuple[str, str], tuple[int, bytes, str | None]] = {}
        for chunk in _chunks(names):
            marks = ",".join("?" * len(chunk))
            async with self._db.execute(
                f"SELECT name, version, id, digest, removed_at FROM entries "
                f"WHERE upstream = ? AND name IN ({marks})",
                (upstream, *chunk),
            ) as cursor:
                async for name, version, entry_id, digest, removed in cursor:
                    known[(name, version)] = (entry_id, digest, removed)
        unchanged: list[tuple[int, int]] = []
        for entry in entries:
            key = (entry.name, entry.version)
            previous = known.get(key)
            values = (
                entry.server,
                entry.meta,
                entry.status,
                entry.status_message,
                entry.status_changed_at,
                entry.published_at,
                entry.updated_at,
                entry.description,
                entry.digest,
                now,
                sweep,
            )
            if previous is None:
                cursor = await self._db.execute(
                    "INSERT INTO entries (server, meta, status, status_message, "
                    "status_changed_at, published_at, upstream_updated_at, description, digest, "
                    "stored_at, seen_sweep, upstream, name, version, first_seen_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, upstream, entry.name, entry.version, now),
                )
                assert cursor.lastrowid is not None
                known[key] = (cursor.lastrowid, entry.digest, None)
                counts.inserted += 1
                touched.add(entry.name)
            elif previous[1] == entry.digest and previous[2] is None:
                unchanged.append((sweep, previous[0]))
                counts.unchanged += 1
            else:
                await self._db.execute(
                    "UPDATE entries SET server = ?, meta = ?, status = ?, status_message = ?, "
                    "status_changed_at = ?, published_at = ?, upstream_updated_at = ?, "
                    "description = ?, digest = ?, stored_at = ?, seen_sweep = ?, "
                    "removed_at = NULL WHERE id = ?",
                    (*values, previous[0]),
                )
                known[key] = (previous[0], entry.digest, None)
                counts.updated += 1
                touched.add(entry.name)
        if unchanged:
            await self._db.executemany("UPDATE entries SET seen_sweep = ? WHERE id = ?", unchanged)
        accepted = [(upstream, f"{e.name}@{e.version}") for e in entries]
        await self._db.executemany(
            "DELETE FROM quarantine WHERE upstream = ? AND key = ?", accepted
        )
        return counts, touched

    async def quarantine(self, upstream: str, rejected: Sequence[Rejected], now: str) -> None:
        await self._db.executemany(
            "INSERT INTO quarantine (upstream, key, reason, raw, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (upstream, key) DO UPDATE SET "
            "reason = excluded.reason, raw = excluded.raw, last_seen = excluded.last_seen",
            [(upstream, r.key, r.reason, r.raw, now, now) for r in rejected],
        )

    async def mark_all_seen(self, upstream: str, sweep: int) -> int:
        cursor = await self._db.execute(
            "UPDATE entries SET seen_sweep = ? WHERE upstream = ? AND removed_at IS NULL",
            (sweep, upstream),
        )
        return cursor.rowcount

    async def sweep(self, upstream: str, sweep: int, now: str) -> tuple[int, int, int, set[str]]:
        """After a full listing: mark what it did not see as removed, unless it saw too little.

        Returns (held, seen, removed, names touched). Nothing is marked when the pass saw under half
        of what the mirror held: an empty or truncated upstream must never wipe the mirror.
        """
        async with self._db.execute(
            "SELECT count(*), coalesce(sum(seen_sweep = ?), 0) FROM entries "
            "WHERE upstream = ? AND removed_at IS NULL",
            (sweep, upstream),
        ) as cursor:
            row = await cursor.fetchone()
        held, seen = (int(row[0]), int(row[1])) if row else (0, 0)
        if held == 0 or seen * 2 < held:
            return held, seen, 0, set()
        async with self._db.execute(
            "SELECT DISTINCT name FROM entries WHERE upstream = ? AND removed_at IS NULL "
            "AND seen_sweep != ?",
            (upstream, sweep),
        ) as cursor:
            names = {row[0] async for row in cursor}
        cursor = await self._db.execute(
            "UPDATE entries SET removed_at = ?, stored_at = ? "
            "WHERE upstream = ? AND removed_at IS NULL AND seen_sweep != ?",
            (now, now, upstream, sweep),
        )
        return held, seen, cursor.rowcount, names

    async def entries_for(self, names: Iterable[str]) -> list[StoredEntry]:
        """Every stored version of these names, from every upstream."""
        found: list[StoredEntry] = []
        for chunk in _chunks(sorted(set(names))):
            marks = ",".join("?" * len(chunk))
            async with self._db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE name IN ({marks})", tuple(chunk)
            ) as cursor:
                found.extend(StoredEntry(*row) for row in await cursor.fetchall())
        return found

    async def names_after(self, after: str, limit: int) -> list[str]:
        """Stored names in order, for walking the whole catalogue in bounded batches."""
        async with self._db.execute(
            "SELECT DISTINCT name FROM entries WHERE name > ? ORDER BY name LIMIT ?",
            (after, limit),
        ) as cursor:
            return [row[0] async for row in cursor]

    # --- served views -----------------------------------------------------------------------

    async def served_state(
        self, view: str, names: Iterable[str]
    ) -> dict[tuple[str, str], ExistingServed]:
        found: dict[tuple[str, str], ExistingServed] = {}
        for chunk in _chunks(sorted(set(names))):
            marks = ",".join("?" * len(chunk))
            async with self._db.execute(
                f"SELECT name, version, entry_id, form, status FROM served "
                f"WHERE view = ? AND name IN ({marks})",
                (view, *chunk),
            ) as cursor:
                async for name, version, entry_id, form, status in cursor:
                    found[(name, version)] = ExistingServed(entry_id, form, status)
        return found

    async def write_served(
        self,
        view: str,
        rows: Sequence[ServedRow],
        existing: Mapping[tuple[str, str], ExistingServed],
    ) -> int:
        """Write the rows whose served form changed; each gets a fresh mirror `updatedAt`.

        A row's `meta` leaves its first `"{stamp}"` for the mirror time allocated here, so the
        served bytes are rendered once, at write time, never per request.
        """
        changed = 0
        for row in rows:
            key = (row.name, row.version)
            before = existing.get(key)
            if before is not None and before.form == row.form:
                continue
            stamp = self.stamp()
            meta = row.meta.replace('"{stamp}"', f'"{stamp}"', 1)
            await self._db.execute(
                "INSERT INTO served (view, name, version, entry_id, upstream, status, is_latest, "
                "published_ts, updated_at, description, form, meta) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (view, name, version) DO UPDATE SET entry_id = excluded.entry_id, "
                "upstream = excluded.upstream, status = excluded.status, "
                "is_latest = excluded.is_latest, published_ts = excluded.published_ts, "
                "updated_at = excluded.updated_at, description = excluded.description, "
                "form = excluded.form, meta = excluded.meta",
                (
                    view,
                    row.name,
                    row.version,
                    row.entry_id,
                    row.upstream,
                    row.status,
                    row.is_latest,
                    row.published_ts,
                    stamp,
                    row.description,
                    row.form,
                    meta,
                ),
            )
            changed += 1
        return changed

    async def add_rule_hits(self, view: str, hits: Mapping[str, int]) -> None:
        await self._db.executemany(
            "INSERT INTO rule_hits (view, rule, hits) VALUES (?, ?, ?) "
            "ON CONFLICT (view, rule) DO UPDATE SET hits = hits + excluded.hits",
            [(view, rule, n) for rule, n in hits.items() if n],
        )

    async def reset_rule_hits(self, view: str) -> None:
        await self._db.execute("DELETE FROM rule_hits WHERE view = ?", (view,))
