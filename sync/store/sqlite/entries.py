"""Writer side: raw upstream entries, quarantine and the full-pass sweep."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import aiosqlite

from sync.model import Entry, Rejected, StoredEntry
from sync.store.records import PassCounts, Sweep
from sync.store.sqlite.queries import select_entries

__all__ = ["EntryWrites"]

_KEYS_PER_QUERY = 400  # two bound parameters a key; far below SQLite's 32,766


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
        # A key repeated within the page keeps its last copy.
        latest = {(e.name, e.version): e for e in entries}
        known = await self._known(upstream, list(latest))
        # One statement per kind of write, not per entry: each aiosqlite call is a thread
        # round trip.
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
                continue
            entry_id, digest, removed, seen = previous
            counts.repeated += seen == sweep
            if digest == entry.digest and removed is None:
                unchanged.append((sweep, entry_id))
            else:
                updates.append((*values, entry_id))
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
                "removed_at = NULL, missed = 0 WHERE id = ?",
                updates,
            )
        if unchanged:
            await self._db.executemany(
                "UPDATE entries SET seen_sweep = ?, missed = 0 WHERE id = ?", unchanged
            )
        counts.repeated += len(entries) - len(latest)
        counts.inserted, counts.updated = len(inserts), len(updates)
        counts.unchanged = len(entries) - len(inserts) - len(updates)
        keys = [f"{name}@{version}" for name, version in latest]
        marks = ",".join("?" * len(keys))
        await self._db.execute(
            f"DELETE FROM quarantine WHERE upstream = ? AND key IN ({marks})", (upstream, *keys)
        )
        return counts, touched

    async def _known(
        self, upstream: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, bytes, str | None, int]]:
        """The stored state of exactly these keys: looked up by key through the unique index,
        so a page costs the same whether its name has 3 stored versions or 10,000."""
        known: dict[tuple[str, str], tuple[int, bytes, str | None, int]] = {}
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[start : start + _KEYS_PER_QUERY]
            values = ",".join(["(?, ?)"] * len(chunk))
            params = [part for key in chunk for part in key]
            async with self._db.execute(
                f"SELECT e.name, e.version, e.id, e.digest, e.removed_at, e.seen_sweep "
                f"FROM (VALUES {values}) AS k CROSS JOIN entries e "
                "ON e.name = k.column1 AND e.upstream = ? AND e.version = k.column2",
                (*params, upstream),
            ) as cursor:
                for name, version, *state in await cursor.fetchall():
                    known[(name, version)] = (state[0], state[1], state[2], state[3])
        return known

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

    async def sweep(self, upstream: str, sweep: int, now: str, *, agree: int = 2) -> Sweep:
        """After a complete full listing: what it did not see is absent once more; what
        `agree` complete listings in a row did not see is marked removed.

        A listing that saw under half of what
        the mirror holds does not count at all: an empty or truncated upstream never wipes
        the mirror, and a listing that ended early without saying so only gets a warning
        mark that the next complete listing confirms or clears (an entry seen again is
        restored at once by `upsert_entries`).
        """
        async with self._db.execute(
            "SELECT count(*), coalesce(sum(seen_sweep = ?), 0) FROM entries "
            "WHERE upstream = ? AND removed_at IS NULL",
            (sweep, upstream),
        ) as cursor:
            row = await cursor.fetchone()
        held, seen = (int(row[0]), int(row[1])) if row else (0, 0)
        if held == 0 or seen * 2 < held:
            return Sweep(held, seen, counted=False)
        marked = await self._db.execute(
            "UPDATE entries SET missed = missed + 1 "
            "WHERE upstream = ? AND removed_at IS NULL AND seen_sweep != ?",
            (upstream, sweep),
        )
        async with self._db.execute(
            "SELECT DISTINCT name FROM entries WHERE upstream = ? AND removed_at IS NULL "
            "AND missed >= ?",
            (upstream, agree),
        ) as cursor:
            names = {row[0] async for row in cursor}
        cursor = await self._db.execute(
            "UPDATE entries SET removed_at = ?, stored_at = ? "
            "WHERE upstream = ? AND removed_at IS NULL AND missed >= ?",
            (now, now, upstream, agree),
        )
        removed = cursor.rowcount
        return Sweep(held, seen, True, removed, marked.rowcount - removed, names)

    async def held_count(self, upstream: str) -> int:
        """Versions stored for one upstream, removed ones included."""
        async with self._db.execute(
            "SELECT count(*) FROM entries WHERE upstream = ?", (upstream,)
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

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
