"""Writer side: raw upstream entries, quarantine and the full-pass sweep (PostgreSQL).

A page costs a fixed handful of round trips whatever its size: its stored state is looked up
by key in one statement (arrays joined to the unique index), and each kind of write is one
statement over arrays (`unnest`), never one statement per entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from sync.model import Entry, Rejected, StoredEntry
from sync.store.records import PassCounts, Sweep

__all__ = ["ENTRY_COLUMNS", "EntryWrites", "copy_rows", "select_entries"]

ENTRY_COLUMNS = (
    "id, upstream, name, version, server, meta, status, status_message, status_changed_at, "
    "published_at, upstream_updated_at, description, stored_at, first_seen_at, removed_at"
)
_FIELDS = (
    "server, meta, status, status_message, status_changed_at, published_at, "
    "upstream_updated_at, description, digest"
)
_TYPES = "text[], text[], text[], text[], text[], text[], text[], text[], bytea[]"

_INSERT_COLUMNS = f"{_FIELDS}, name, version, upstream, stored_at, first_seen_at, seen_sweep".split(
    ", "
)
_INSERT_TYPES = [
    *(t.strip().removesuffix("[]") for t in _TYPES.split(",")),
    *["text"] * 5,
    "bigint",
]

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
NUL, ESCAPED_NUL = "\0", "\\u0000"


def _storable(entry: Entry) -> Entry:
    """The entry with NUL out of its free text (description, status message): its raw JSON,
    which is what is served, keeps the `\\u0000` escape as sent."""
    if NUL not in entry.description and NUL not in (entry.status_message or ""):
        return entry
    return entry._replace(
        description=entry.description.replace(NUL, "\ufffd"),
        status_message=None
        if entry.status_message is None
        else entry.status_message.replace(NUL, "\ufffd"),
    )


def _unkeyable(entry: Entry) -> Rejected:
    key = f"{entry.name}@{entry.version}"
    return Rejected(
        key, "name or version contains NUL, which PostgreSQL cannot store", entry.server
    )


async def select_entries(
    conn: Conn, names: Iterable[str], *, with_server: bool = True
) -> list[StoredEntry]:
    """Every stored version of these names, from every upstream, in (name, upstream, version)
    order. Without `with_server` the server JSON is left out ('') for callers that only need
    the facts: it is the bulk."""
    wanted = sorted(set(names))
    if not wanted:
        return []
    columns = ENTRY_COLUMNS if with_server else ENTRY_COLUMNS.replace(" server,", " '',")
    columns = ", ".join(f"e.{c}" if c != "''" else c for c in columns.split(", "))
    # One probe of the unique index per name, whatever the statistics say: a first sync
    # outruns them, and a planner that guesses wrong scans the whole table on every page.
    # (LATERAL with OFFSET 0 keeps the planner from turning the probes into a hash join.)
    cursor = await conn.execute(
        f"SELECT {columns} FROM unnest(%b::text[]) AS k(name) CROSS JOIN LATERAL "
        "(SELECT * FROM entries WHERE name = k.name OFFSET 0) AS e "
        "ORDER BY e.name, e.upstream, e.version",
        (wanted,),
    )
    return [StoredEntry(*row) for row in await cursor.fetchall()]


def _columns(rows: Sequence[Sequence[object]]) -> list[list[object]]:
    """Rows to per-column lists: the shape `unnest` takes."""
    return [list(column) for column in zip(*rows, strict=True)]


class EntryWrites:
    """Mixed into PostgresStore; every method runs inside the caller's transaction."""

    _conn: Conn

    async def upsert_entries(
        self, upstream: str, entries: Sequence[Entry], *, sweep: int, now: str
    ) -> tuple[PassCounts, set[str]]:
        """Store a page of entries idempotently; return counts and the names that changed."""
        counts = PassCounts()
        touched: set[str] = set()
        if not entries:
            return counts, touched
        # A key repeated within the page keeps its last copy. PostgreSQL text cannot hold
        # NUL: free text keeps a U+FFFD in its place (as the parser does for a lone surrogate).
        latest = {(e.name, e.version): _storable(e) for e in entries}
        unkeyable = [key for key in latest if NUL in key[0] or NUL in key[1]]
        if unkeyable:
            await self.quarantine(upstream, [_unkeyable(latest.pop(k)) for k in unkeyable], now)
        known = await self._known(upstream, list(latest))
        inserts: list[tuple[object, ...]] = []
        updates: list[tuple[object, ...]] = []
        unchanged: list[int] = []
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
            )
            if previous is None:
                inserts.append((*values, entry.name, entry.version))
                touched.add(entry.name)
                continue
            entry_id, digest, removed, seen = previous
            counts.repeated += seen == sweep
            if digest == entry.digest and removed is None:
                unchanged.append(entry_id)
            else:
                updates.append((*values, entry_id))
                touched.add(entry.name)
        if inserts:
            # Keys the lookup did not find: COPY writes them without an array to build.
            await copy_rows(
                self._conn,
                "entries",
                _INSERT_COLUMNS,
                _INSERT_TYPES,
                [(*row, upstream, now, now, sweep) for row in inserts],
            )
        # The other writes need no answer: sent together, they cost one round trip.
        async with self._conn.pipeline():
            await self._write(sweep, now, updates, unchanged)
            keys = [f"{name}@{version}" for name, version in latest]
            await self._conn.execute(
                "DELETE FROM quarantine WHERE upstream = %s AND key = ANY(%b::text[])",
                (upstream, keys),
            )
        counts.repeated += len(entries) - len(latest) - len(unkeyable)
        counts.inserted, counts.updated = len(inserts), len(updates)
        counts.unchanged = len(entries) - len(inserts) - len(updates) - len(unkeyable)
        return counts, touched

    async def _write(
        self, sweep: int, now: str, updates: Sequence[tuple[object, ...]], unchanged: list[int]
    ) -> None:
        if updates:
            await self._conn.execute(
                "UPDATE entries e SET server = u.server, meta = u.meta, status = u.status, "
                "status_message = u.status_message, status_changed_at = u.status_changed_at, "
                "published_at = u.published_at, upstream_updated_at = u.upstream_updated_at, "
                "description = u.description, digest = u.digest, stored_at = %s, "
                "seen_sweep = %s, removed_at = NULL, missed = 0 "
                f"FROM unnest({_placeholders(_TYPES)}, %b::bigint[]) "
                f"AS u({_FIELDS}, id) WHERE e.id = u.id",
                (now, sweep, *_columns(updates)),
            )
        if unchanged:
            await self._conn.execute(
                "UPDATE entries SET seen_sweep = %s, missed = 0 WHERE id = ANY(%b::bigint[])",
                (sweep, unchanged),
            )

    async def _known(
        self, upstream: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, bytes, str | None, int]]:
        """The stored state of exactly these keys: looked up by key through the unique index,
        so a page costs the same whether its name has 3 stored versions or 10,000."""
        cursor = await self._conn.execute(
            "SELECT e.name, e.version, e.id, e.digest, e.removed_at, e.seen_sweep "
            "FROM unnest(%b::text[], %b::text[]) AS k(name, version) CROSS JOIN LATERAL "
            "(SELECT * FROM entries WHERE name = k.name AND upstream = %s "
            "AND version = k.version OFFSET 0) AS e",
            ([name for name, _ in keys], [version for _, version in keys], upstream),
        )
        return {
            (name, version): (entry_id, bytes(digest), removed, seen)
            for name, version, entry_id, digest, removed, seen in await cursor.fetchall()
        }

    async def quarantine(self, upstream: str, rejected: Sequence[Rejected], now: str) -> None:
        if not rejected:
            return
        # A key repeated within the call keeps its last copy, as one upsert per row would.
        # NUL, which PostgreSQL text cannot hold, is shown as the JSON escape it came from.
        last = {
            r.key.replace(NUL, ESCAPED_NUL): Rejected(
                r.key.replace(NUL, ESCAPED_NUL),
                r.reason.replace(NUL, ESCAPED_NUL),
                r.raw.replace(NUL, ESCAPED_NUL),
            )
            for r in rejected
        }
        await self._conn.execute(
            "INSERT INTO quarantine (upstream, key, reason, raw, first_seen, last_seen) "
            "SELECT %s, k, r, w, %s, %s FROM unnest(%b::text[], %b::text[], %b::text[]) "
            "AS q(k, r, w) ON CONFLICT (upstream, key) DO UPDATE SET "
            "reason = excluded.reason, raw = excluded.raw, last_seen = excluded.last_seen",
            (
                upstream,
                now,
                now,
                list(last),
                [r.reason for r in last.values()],
                [r.raw for r in last.values()],
            ),
        )

    async def mark_all_seen(self, upstream: str, sweep: int) -> int:
        cursor = await self._conn.execute(
            "UPDATE entries SET seen_sweep = %s WHERE upstream = %s AND removed_at IS NULL",
            (sweep, upstream),
        )
        return cursor.rowcount

    async def sweep(self, upstream: str, sweep: int, now: str, *, agree: int = 2) -> Sweep:
        """After a complete full listing: what it did not see is absent once more; what
        `agree` complete listings in a row did not see is marked removed (see the SQLite
        store: the same rules, the same counts)."""
        cursor = await self._conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE seen_sweep = %s) FROM entries "
            "WHERE upstream = %s AND removed_at IS NULL",
            (sweep, upstream),
        )
        row = await cursor.fetchone()
        held, seen = (int(row[0]), int(row[1])) if row else (0, 0)
        if held == 0 or seen * 2 < held:
            return Sweep(held, seen, counted=False)
        marked = await self._conn.execute(
            "UPDATE entries SET missed = missed + 1 "
            "WHERE upstream = %s AND removed_at IS NULL AND seen_sweep != %s",
            (upstream, sweep),
        )
        absent = marked.rowcount
        cursor = await self._conn.execute(
            "UPDATE entries SET removed_at = %s, stored_at = %s "
            "WHERE upstream = %s AND removed_at IS NULL AND missed >= %s RETURNING name",
            (now, now, upstream, agree),
        )
        names = {str(row[0]) for row in await cursor.fetchall()}
        removed = cursor.rowcount
        return Sweep(held, seen, True, removed, absent - removed, names)

    async def held_count(self, upstream: str) -> int:
        """Versions stored for one upstream, removed ones included."""
        cursor = await self._conn.execute(
            "SELECT count(*) FROM entries WHERE upstream = %s", (upstream,)
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def entries_for(
        self, names: Iterable[str], *, with_server: bool = True
    ) -> list[StoredEntry]:
        """Every stored version of these names, from every upstream."""
        return await select_entries(self._conn, names, with_server=with_server)

    async def names_after(self, after: str, limit: int) -> list[str]:
        """Stored names in order, for walking the whole catalogue in bounded batches."""
        cursor = await self._conn.execute(
            "SELECT DISTINCT name FROM entries WHERE name > %s ORDER BY name LIMIT %s",
            (after, limit),
        )
        return [str(row[0]) for row in await cursor.fetchall()]


async def copy_rows(
    conn: Conn,
    table: str,
    columns: Sequence[str],
    types: Sequence[str],
    rows: Iterable[Sequence[object]],
) -> None:
    """Append rows to a table with binary COPY: each value is sent as it is, with none of
    the per-element work of building an array parameter, and no row goes through the
    executor one statement at a time."""
    async with (
        conn.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(list(types))
        for row in rows:
            await copy.write_row(row)


def _placeholders(types: str) -> str:
    """`%b::text[], …` for a list of array types."""
    return ", ".join(f"%b::{t.strip()}" for t in types.split(","))
