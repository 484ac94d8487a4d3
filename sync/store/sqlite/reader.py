"""Read-only access for the API and the reporting commands.

Readers open the file with `mode=ro` and `query_only`, so nothing on the read side can write,
and in WAL mode they never wait for the syncing writer. A few connections are used round-robin
(aiosqlite runs each on its own thread); every list is answered from an index, in pages.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import aiosqlite

from sync.errors import StoreError
from sync.model import StoredEntry
from sync.store.rank import RankedItem
from sync.store.records import (
    PASS_COLUMNS,
    LeaderRecord,
    ListQuery,
    PassRecord,
    QuarantineRecord,
    ServedItem,
    UpstreamState,
    export_rows,
)
from sync.store.sqlite.queries import select_entries, select_states
from sync.store.text import fold

__all__ = ["SqliteReader"]


# bm25 weights in the index's column order: name, namespace, title, description, packages.
RANK_WEIGHTS = "10.0, 1.0, 6.0, 1.0, 4.0"
_ITEM = (
    "SELECT s.name, s.version, e.server, s.meta FROM served s JOIN entries e ON e.id = s.entry_id"
)


def _exists(path: Path) -> bool:
    return path.exists()


def _on_read_only_storage(path: Path) -> bool:
    return _exists(path) and not os.access(path.parent, os.W_OK)


class SqliteReader:
    def __init__(
        self,
        connections: list[aiosqlite.Connection],
        *,
        path: Path | None = None,
        sort_delta_max: int = 5000,
        search_sort_max: int = 10000,
    ) -> None:
        self.path = path
        self._connections = connections
        self.sort_delta_max = sort_delta_max
        self.search_sort_max = search_sort_max
        self._next = itertools.cycle(connections)

    @classmethod
    async def open(cls, path: Path, *, connections: int = 2) -> SqliteReader:
        uri = f"file:{path}?mode=ro"
        try:
            return cls(await cls._connect(uri, connections), path=path)
        except sqlite3.Error as exc:
            error = exc
        # A WAL file on a read-only filesystem cannot get its shared-memory index. Nothing can
        # write there either, so reading it as immutable is exact, not a guess.
        if _on_read_only_storage(path):
            try:
                return cls(await cls._connect(f"{uri}&immutable=1", connections), path=path)
            except sqlite3.Error as exc:
                error = exc
        hint = "" if _exists(path) else " (run a sync first)"
        raise StoreError(f"cannot open {path} read-only: {error}{hint}") from None

    async def reopen(self) -> SqliteReader:
        """Read the file now at this path from here on (open connections keep reading the file
        they opened, whatever replaced it); the old connections come back as a Reader of their
        own, for the caller to close once the requests still using them are done."""
        assert self.path is not None
        fresh = await SqliteReader.open(self.path, connections=len(self._connections))
        old = SqliteReader(self._connections, path=self.path)
        self._connections, self._next = fresh._connections, fresh._next
        return old

    @staticmethod
    async def _connect(uri: str, count: int) -> list[aiosqlite.Connection]:
        opened: list[aiosqlite.Connection] = []
        try:
            for _ in range(count):
                db = await aiosqlite.connect(uri, uri=True)
                opened.append(db)
                await db.execute("PRAGMA query_only = 1")
                await db.execute("PRAGMA busy_timeout = 5000")
                # Read now so a bad file fails here; finish the statement so that it holds
                # no snapshot (an open read would pin this connection to the past).
                async with db.execute("SELECT count(*) FROM sqlite_master") as cursor:
                    await cursor.fetchall()
        except BaseException:
            for db in opened:
                await db.close()
            raise
        return opened

    async def close(self) -> None:
        for db in self._connections:
            await db.close()

    def _db(self) -> aiosqlite.Connection:
        return next(self._next)

    async def _all(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        # One round trip to the connection's thread (execute, fetch and close together):
        # the hops, not SQLite, bound a reader's throughput.
        return list(await self._db().execute_fetchall(sql, params))

    # --- the served view -----------------------------------------------------------------

    async def list_servers(self, q: ListQuery) -> list[ServedItem]:
        """Up to `q.limit + 1` items in (name, version) order, so callers can tell if more exist."""
        sql, params = await self._list_sql(q)
        return [tuple(r) for r in await self._all(sql, params)]

    async def plan(self, q: ListQuery) -> list[str]:
        """SQLite's query plan for a list query: how ops (and tests) see that it uses indexes."""
        sql, params = await self._list_sql(q)
        return [str(row[3]) for row in await self._all(f"EXPLAIN QUERY PLAN {sql}", params)]

    async def _small_delta(self, view: str, since: str) -> bool:
        """Whether at most `sort_delta_max` rows changed since `since`, so that sorting them
        is cheap; counted by the index and never past the threshold."""
        rows = await self._all(
            "SELECT count(*) FROM (SELECT 1 FROM served WHERE view = ? AND updated_at > ? LIMIT ?)",
            (view, since, self.sort_delta_max + 1),
        )
        return int(rows[0][0]) <= self.sort_delta_max

    async def _list_sql(self, q: ListQuery) -> tuple[str, tuple[object, ...]]:
        where: list[str] = ["s.view = ?"]
        params: list[object] = [q.view]
        if q.after is not None:
            name, version = q.after
            if version is None:
                where.append("s.name > ?")
                params.append(name)
            else:
                where.append("(s.name, s.version) > (?, ?)")
                params += [name, version]
        if not q.include_deleted:
            where.append("s.status != 'deleted'")
        if q.version == "latest":
            where.append("s.is_latest = 1")
        elif q.version is not None:
            where.append("s.version = ?")
            params.append(q.version)
        small = False
        if q.updated_since is not None:
            # An incremental pull reads few rows: find them by time and sort them. A pull from
            # long ago reads most rows: walk the name index and filter instead of sorting it all.
            small = await self._small_delta(q.view, q.updated_since)
            where.append("s.updated_at > ?" if small else "+s.updated_at > ?")
            params.append(q.updated_since)
        matches = "served s"
        sorted_subset = q.updated_since is not None and small
        if q.search:
            # Both paths compare folded text (see `fold`): the term folded here, the rows when
            # they were written. A term is a literal substring on both: `%`, `_`, `\` and
            # quotes match themselves.
            term = fold(q.search)
            phrase = '"' + term.replace('"', '""') + '"'
            # FTS5 cannot parse a phrase holding NUL ("unterminated string"): scan for it.
            if len(term) >= 3 and "\0" not in term and await self._rare(phrase):
                # Few matches: let the trigram index find them all, then sort those. CROSS
                # JOIN fixes the order: otherwise SQLite would probe the index once per row.
                matches = (
                    "served_search f CROSS JOIN served s "
                    "ON s.id = f.rowid AND f.served_search MATCH ?"
                )
                params.insert(0, phrase)
                sorted_subset = True
            else:
                # Short or common terms: walk the name index and stop at the page's end;
                # matches are dense, so that end comes soon.
                where.append("(instr(s.search_name, ?) > 0 OR instr(s.search_description, ?) > 0)")
                params += [term, term]
        order = "ORDER BY s.name, s.version"
        if not sorted_subset:
            sql = f"{_ITEM} WHERE {' AND '.join(where)} {order} LIMIT ?"
            return sql, (*params, q.limit + 1)
        # Sorting a subset: sort only the keys, then fetch the page's payload. Sorting rows
        # that carry the server JSON costs several times more.
        sql = (
            f"SELECT s.name, s.version, e.server, s.meta FROM (SELECT s.id FROM {matches} "
            f"WHERE {' AND '.join(where)} {order} LIMIT ?) AS page "
            f"CROSS JOIN served s ON s.id = page.id JOIN entries e ON e.id = s.entry_id {order}"
        )
        return sql, (*params, q.limit + 1)

    async def _rare(self, phrase: str) -> bool:
        """Whether at most `search_sort_max` served rows contain the phrase (any view)."""
        # While a first full sync defers the index (setting "stale") it is incomplete: scan.
        rows = await self._all(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM settings WHERE key = 'search_index' "
            "AND value = 'stale') THEN -1 ELSE (SELECT count(*) FROM (SELECT 1 FROM "
            "served_search WHERE served_search MATCH ? LIMIT ?)) END",
            (phrase, self.search_sort_max + 1),
        )
        return 0 <= int(rows[0][0]) <= self.search_sort_max

    async def ranked(
        self, view: str, terms: Sequence[str], limit: int, offset: int, *, latest: bool = True
    ) -> list[RankedItem]:
        """Up to `limit` items of `view` matching every term as a word prefix, best first
        (bm25 with column weights, then name and version: a total order, so offsets page
        stably); tombstones never."""
        if not terms:
            return []
        # Each term a quoted phrase with a prefix star: whatever it holds, it is never syntax.
        match = " ".join('"' + t.replace('"', '""') + '"*' for t in terms)
        latest_only = "AND s.is_latest = 1" if latest else ""
        rows = await self._all(
            "SELECT s.name, s.version, e.server, s.meta, -r.score FROM (SELECT rowid AS id, "
            f"bm25(served_rank, {RANK_WEIGHTS}) AS score FROM served_rank "
            "WHERE served_rank MATCH ?) AS r CROSS JOIN served s ON s.id = r.id "
            "JOIN entries e ON e.id = s.entry_id "
            f"WHERE s.view = ? AND s.status != 'deleted' {latest_only} "
            "ORDER BY r.score, s.name, s.version LIMIT ? OFFSET ?",
            (match, view, limit, offset),
        )
        return [((r[0], r[1], r[2], r[3]), float(r[4])) for r in rows]

    async def versions(self, view: str, name: str, *, include_deleted: bool) -> list[ServedItem]:
        hidden = "" if include_deleted else "AND s.status != 'deleted'"
        rows = await self._all(
            f"{_ITEM} WHERE s.view = ? AND s.name = ? {hidden} "
            "ORDER BY s.published_ts DESC, s.version DESC",
            (view, name),
        )
        return [tuple(r) for r in rows]

    async def version(
        self, view: str, name: str, version: str, *, include_deleted: bool
    ) -> ServedItem | None:
        hidden = "" if include_deleted else "AND s.status != 'deleted'"
        if version == "latest":
            sql = f"{_ITEM} WHERE s.view = ? AND s.name = ? AND s.is_latest = 1 {hidden}"
            rows = await self._all(sql, (view, name))
        else:
            sql = f"{_ITEM} WHERE s.view = ? AND s.name = ? AND s.version = ? {hidden}"
            rows = await self._all(sql, (view, name, version))
        return tuple(rows[0]) if rows else None

    async def export(self, view: str, batch: int = 500) -> AsyncIterator[ServedItem]:
        """Every served row, deleted ones included, in bounded batches."""
        async for row in export_rows(self.list_servers, view, batch):
            yield row

    async def served_counts(self, view: str) -> tuple[dict[str, int], int]:
        """Versions per served status, and names with a visible version."""
        rows = await self._all(
            "SELECT status, count(*) FROM served WHERE view = ? GROUP BY status", (view,)
        )
        names = await self._all(
            "SELECT count(DISTINCT name) FROM served WHERE view = ? AND status != 'deleted'",
            (view,),
        )
        return {r[0]: r[1] for r in rows}, int(names[0][0])

    # --- operations -------------------------------------------------------------------------

    async def upstream_states(self) -> dict[str, UpstreamState]:
        return {s.name: s for s in await select_states(self._db())}

    async def entries_for(self, names: Iterable[str]) -> list[StoredEntry]:
        return await select_entries(self._db(), names)

    async def held(self) -> dict[str, tuple[int, int]]:
        """Per upstream: versions held (not removed) and versions marked removed."""
        rows = await self._all(
            "SELECT upstream, sum(removed_at IS NULL), sum(removed_at IS NOT NULL) "
            "FROM entries GROUP BY upstream"
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    async def passes(self, upstream: str | None = None, limit: int = 10) -> list[PassRecord]:
        where, params = ("WHERE upstream = ?", (upstream,)) if upstream else ("", ())
        rows = await self._all(
            f"SELECT {PASS_COLUMNS} FROM passes {where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [PassRecord.from_row(r) for r in rows]

    async def quarantine(self, upstream: str | None = None) -> list[QuarantineRecord]:
        where, params = ("WHERE upstream = ?", (upstream,)) if upstream else ("", ())
        rows = await self._all(
            f"SELECT upstream, key, reason, raw, first_seen, last_seen FROM quarantine {where} "
            "ORDER BY upstream, key",
            params,
        )
        return [QuarantineRecord(*r) for r in rows]

    async def quarantine_counts(self) -> dict[str, int]:
        rows = await self._all("SELECT upstream, count(*) FROM quarantine GROUP BY upstream")
        return {r[0]: r[1] for r in rows}

    async def rule_hits(self, view: str) -> dict[str, int]:
        rows = await self._all("SELECT rule, hits FROM rule_hits WHERE view = ?", (view,))
        return {r[0]: r[1] for r in rows}

    async def leader(self) -> LeaderRecord | None:
        return None  # one process owns a SQLite file: its lock says who

    async def change_serial(self) -> int | None:
        return None  # the file's stats tell (sync.serve.cache)
