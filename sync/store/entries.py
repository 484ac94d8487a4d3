"""Writer side: raw upstream entries, quarantine and the full-pass sweep."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import aiosqlite

from sync.store.queries import select_by_names, select_entries
from sync.store.records import PassCounts, StoredEntry
from sync.wire import Entry, Rejected

__all__ = ["EntryWrites"]


class EntryWrites:
    """Mixed into Store; every method runs inside the caller's transaction."""

    _db: aiosqlite.Connection

    async def upsert_entries(
        self, upstream: str, entries: Sequence[Entry], *, sweep: int, now: str
    ) -> tuple[PassCounts, set[str]]:
        """Store a page of entries idempotently; return counts and the names that changed."""
        counts = PassCounts()
        touched: set[str] = set()
        if not entries:
            return counts, touched
        rows = await select_by_names(
            self._db,
            "SELECT name, version, id, digest, removed_at FROM entries "
            "WHERE upstream = ? AND name IN ({names})",
            (upstream,),
            (e.name for e in entries),
        )
        known = {
            (name, version): (i, digest, removed) for name, version, i, digest, removed in rows
        }
        # One statement per kind of write, not per entry: each aiosqlite call is a thread
        # round trip. A key repeated within the page keeps its last copy.
        latest = {(e.name, e.version): e for e in entries}
        inserts: list[tuple[object, ...]] = []
        updates: list[tuple[object, ...]] = []
        unchanged: list[tuple[int, int]] = []
        for key, entry in latest.items():
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
                inserts.append((*values, upstream, entry.name, entry.version, now))
                touched.add(entry.name)
            elif previous[1] == entry.digest and previous[2] is None:
                unchanged.append((sweep, previous[0]))
            else:
                updates.append((*values, previous[0]))
                touched.add(entry.name)
        if inserts:
            await self._db.executemany(
                "INSERT INTO entries (server, meta, status, status_message, "
                "status_changed_at, published_at, upstream_updated_at, description, digest, "
                "stored_at, seen_sweep, upstream, name, version, first_seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                inserts,
            )
        if updates:
            await self._db.executemany(
                "UPDATE entries SET server = ?, meta = ?, status = ?, status_message = ?, "
                "status_changed_at = ?, published_at = ?, upstream_updated_at = ?, "
                "description = ?, digest = ?, stored_at = ?, seen_sweep = ?, "
                "removed_at = NULL WHERE id = ?",
                updates,
            )
        if unchanged:
            await self._db.executemany("UPDATE entries SET seen_sweep = ? WHERE id = ?", unchanged)
        counts.inserted, counts.updated = len(inserts), len(updates)
        counts.unchanged = len(entries) - len(inserts) - len(updates)
        keys = [f"{name}@{version}" for name, version in latest]
        marks = ",".join("?" * len(keys))
        await self._db.execute(
            f"DELETE FROM quarantine WHERE upstream = ? AND key IN ({marks})", (upstream, *keys)
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

    async def entries_for(
        self, names: Iterable[str], *, with_server: bool = True
    ) -> list[StoredEntry]:
        """Every stored version of these names, from every upstream."""
        return await select_entries(self._db, names, with_server=with_server)

    async def names_after(self, after: str, limit: int) -> list[str]:
        """Stored names in order, for walking the whole catalogue in bounded batches."""
        async with self._db.execute(
            "SELECT DISTINCT name FROM entries WHERE name > ? ORDER BY name LIMIT ?",
            (after, limit),
        ) as cursor:
            return [row[0] async for row in cursor]
