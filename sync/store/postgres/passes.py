"""Writer side: per-upstream state, pass records and their checkpoints (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from sync.store.records import PassCounts, UpstreamState

__all__ = ["STATE_COLUMNS", "PassWrites", "select_states"]

STATE_COLUMNS = (
    "name, checkpoint, last_full_at, last_success_at, last_error, last_error_at, failures, "
    "circuit_until, pass_id, pass_mode, pass_started, pass_since, pass_cursor, pass_sweep, "
    "source_digest, failing_since, pass_last_name, pass_unordered"
)

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


async def select_states(conn: Conn, name: str | None = None) -> list[UpstreamState]:
    where, params = ("WHERE name = %s", (name,)) if name else ("", ())
    cursor = await conn.execute(f"SELECT {STATE_COLUMNS} FROM upstreams {where}", params)
    return [UpstreamState(*row) for row in await cursor.fetchall()]


class PassWrites:
    """Mixed into PostgresStore; every method runs inside the caller's transaction."""

    _conn: Conn

    async def state(self, upstream: str) -> UpstreamState:
        await self._conn.execute(
            "INSERT INTO upstreams (name) VALUES (%s) ON CONFLICT DO NOTHING", (upstream,)
        )
        [state] = await select_states(self._conn, upstream)
        return state

    async def close_interrupted(
        self,
        now: str,
        reason: str = "process stopped before the pass completed",
        *,
        pass_id: int | None = None,
    ) -> int:
        """Passes still marked running were stopped (this one, or all of them when a new
        leader starts: they can only belong to a process that is gone or deposed)."""
        only = "" if pass_id is None else " AND id = %s"
        cursor = await self._conn.execute(
            f"UPDATE passes SET outcome = 'interrupted', ended_at = %s, error = %s "
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
        inserted = await self._conn.execute(
            "INSERT INTO passes (upstream, mode, started_at, outcome, resumed_from) "
            "VALUES (%s, %s, %s, 'running', %s) RETURNING id",
            (upstream, mode, now, resumed_from),
        )
        row = await inserted.fetchone()
        assert row is not None
        pass_id = int(row[0])
        resumed = resumed_from is not None
        await self._conn.execute(
            "UPDATE upstreams SET pass_id = %s, pass_mode = %s, pass_started = %s, "
            "pass_since = %s, pass_cursor = %s, pass_sweep = %s, "
            "pass_last_name = CASE WHEN %s THEN pass_last_name END, "
            "pass_unordered = CASE WHEN %s THEN pass_unordered ELSE false END WHERE name = %s",
            (pass_id, mode, started, since, cursor, sweep or pass_id, resumed, resumed, upstream),
        )
        return pass_id

    async def set_pass_started(self, upstream: str, started: str) -> None:
        await self._conn.execute(
            "UPDATE upstreams SET pass_started = %s WHERE name = %s", (started, upstream)
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
        # One statement, one round trip: it runs once a page.
        await self._conn.execute(
            "WITH checkpoint AS (UPDATE upstreams SET pass_cursor = %s, "
            "pass_last_name = coalesce(%s, pass_last_name), pass_unordered = %s "
            "WHERE name = %s) "
            "UPDATE passes SET pages = pages + %s, inserted = inserted + %s, "
            "updated = updated + %s, unchanged = unchanged + %s, removed = removed + %s, "
            "quarantined = quarantined + %s WHERE id = %s",
            (
                cursor,
                last_name,
                unordered,
                upstream,
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
        listed = list(names)
        if listed:
            await self._conn.execute(
                "INSERT INTO pass_pending (upstream, name) SELECT %s, unnest(%b::text[]) "
                "ON CONFLICT DO NOTHING",
                (upstream, listed),
            )

    async def take_pending(self, upstream: str, before: str | None, limit: int) -> list[str]:
        """Remove and return pending names sorting before `before` (every one with None):
        the names a listing in name order can no longer add versions to."""
        bound, params = (
            ("AND name < %s ", (upstream, before, limit)) if before else ("", (upstream, limit))
        )
        cursor = await self._conn.execute(
            # The names are chosen once (an InitPlan) and matched by hash: a semi-join
            # planned on a first sync's stale statistics compares every pair instead.
            "DELETE FROM pass_pending WHERE upstream = %s AND name = ANY(ARRAY("
            f"SELECT name FROM pass_pending WHERE upstream = %s {bound}ORDER BY name LIMIT %s)) "
            "RETURNING name",
            (upstream, *params),
        )
        # RETURNING has no order; Python compares strings by code point, as COLLATE "C" does.
        return sorted(str(row[0]) for row in await cursor.fetchall())

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
        await self._conn.execute(
            "UPDATE passes SET outcome = 'ok', ended_at = %s, checkpoint = %s WHERE id = %s",
            (now, checkpoint, pass_id),
        )
        await self._conn.execute(
            "UPDATE upstreams SET checkpoint = coalesce(%s, checkpoint), last_success_at = %s, "
            "last_full_at = CASE WHEN %s THEN pass_started ELSE last_full_at END, "
            "failures = 0, circuit_until = NULL, failing_since = NULL, "
            "pass_id = NULL, pass_mode = NULL, pass_started = NULL, pass_since = NULL, "
            "pass_cursor = NULL, pass_sweep = NULL, pass_last_name = NULL, "
            "pass_unordered = false, source_digest = coalesce(%s, source_digest) "
            "WHERE name = %s",
            (checkpoint, now, full, source_digest, upstream),
        )

    async def fail_pass(
        self, upstream: str, pass_id: int | None, *, error: str, now: str, circuit_until: str | None
    ) -> None:
        """Record a failed pass; its resume point (cursor, start, sweep) is kept."""
        if pass_id is not None:
            await self._conn.execute(
                "UPDATE passes SET outcome = 'failed', ended_at = %s, error = %s WHERE id = %s",
                (now, error, pass_id),
            )
        await self._conn.execute(
            "UPDATE upstreams SET failures = failures + 1, last_error = %s, last_error_at = %s, "
            "circuit_until = %s, failing_since = coalesce(failing_since, %s) WHERE name = %s",
            (error, now, circuit_until, now, upstream),
        )

    async def record_skip(self, upstream: str, *, mode: str, reason: str, now: str) -> None:
        await self._conn.execute(
            "INSERT INTO passes (upstream, mode, started_at, ended_at, outcome, error) "
            "VALUES (%s, %s, %s, %s, 'skipped', %s)",
            (upstream, mode, now, now, reason),
        )
