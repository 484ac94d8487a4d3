"""Writer side: per-upstream state, pass records and their checkpoints."""

from __future__ import annotations

from collections.abc import Iterable

import aiosqlite

from sync.store.records import PassCounts, UpstreamState
from sync.store.sqlite.queries import select_states

__all__ = ["PassWrites"]


class PassWrites:
    """Mixed into Store; every method runs inside the caller's transaction."""

    _db: aiosqlite.Connection

    async def state(self, upstream: str) -> UpstreamState:
        await self._db.execute("INSERT OR IGNORE INTO upstreams (name) VALUES (?)", (upstream,))
        [state] = await select_states(self._db, upstream)
        return state

    async def close_interrupted(
        self,
        now: str,
        reason: str = "process stopped before the pass completed",
        *,
        pass_id: int | None = None,
    ) -> int:
        """Passes still marked running were stopped (this one, or all of them at start-up,
        when they can only belong to a process that died)."""
        only = "" if pass_id is None else " AND id = ?"
        cursor = await self._db.execute(
            f"UPDATE passes SET outcome = 'interrupted', ended_at = ?, error = ? "
            f"WHERE outcome = 'running'{only}",
            (now, reason) if pass_id is None else (now, reason, pass_id),
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
            "pass_cursor = ?, pass_sweep = ?, "
            "pass_last_name = CASE WHEN ? THEN pass_last_name END, "
            "pass_unordered = CASE WHEN ? THEN pass_unordered ELSE 0 END WHERE name = ?",
            (
                pass_id,
                mode,
                started,
                since,
                cursor,
                sweep if sweep else pass_id,
                resumed_from is not None,
                resumed_from is not None,
                upstream,
            ),
        )
        return pass_id

    async def set_pass_started(self, upstream: str, started: str) -> None:
        await self._db.execute(
            "UPDATE upstreams SET pass_started = ? WHERE name = ?", (started, upstream)
        )

    async def record_page(
        self,
        upstream: str,
        pass_id: int,
        cursor: str | None,
        counts: PassCounts,
        *,
        last_name: str | None = None,
        unordered: bool = False,
    ) -> None:
        """Checkpoint the cursor in the same transaction as the page it follows, with the
        listing order seen so far."""
        await self._db.execute(
            "UPDATE upstreams SET pass_cursor = ?, "
            "pass_last_name = coalesce(?, pass_last_name), pass_unordered = ? WHERE name = ?",
            (cursor, last_name, unordered, upstream),
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

    async def add_pending(self, upstream: str, names: Iterable[str]) -> None:
        """Names whose stored versions changed and whose served form is not decided yet."""
        await self._db.executemany(
            "INSERT OR IGNORE INTO pass_pending (upstream, name) VALUES (?, ?)",
            [(upstream, name) for name in names],
        )

    async def take_pending(self, upstream: str, before: str | None, limit: int) -> list[str]:
        """Remove and return pending names sorting before `before` (every one with None):
        the names a listing in name order can no longer add versions to."""
        bound, params = (
            ("AND name < ? ", (upstream, before, limit)) if before else ("", (upstream, limit))
        )
        async with self._db.execute(
            f"SELECT name FROM pass_pending WHERE upstream = ? {bound}ORDER BY name LIMIT ?",
            params,
        ) as cursor:
            names = [row[0] for row in await cursor.fetchall()]
        if names:
            await self._db.executemany(
                "DELETE FROM pass_pending WHERE upstream = ? AND name = ?",
                [(upstream, name) for name in names],
            )
        return names

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
            "failures = 0, circuit_until = NULL, failing_since = NULL, "
            "pass_id = NULL, pass_mode = NULL, pass_started = NULL, pass_since = NULL, "
            "pass_cursor = NULL, pass_sweep = NULL, pass_last_name = NULL, pass_unordered = 0, "
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
            "circuit_until = ?, failing_since = coalesce(failing_since, ?) WHERE name = ?",
            (error, now, circuit_until, now, upstream),
        )

    async def record_skip(self, upstream: str, *, mode: str, reason: str, now: str) -> None:
        await self._db.execute(
            "INSERT INTO passes (upstream, mode, started_at, ended_at, outcome, error) "
            "VALUES (?, ?, ?, ?, 'skipped', ?)",
            (upstream, mode, now, now, reason),
        )
