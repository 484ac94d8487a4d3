"""Read-only access to a PostgreSQL store, for the API and the reporting commands.

A pool of connections, each read-only for its whole session (`default_transaction_read_only`),
so nothing on the read side can write. Answers are the SQLite reader's, row for row: names and
versions are `COLLATE "C"` (bytewise order), search compares folded text (`fold`) as a literal
substring, found through the pg_trgm GIN indexes. Every list is bounded by its page.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from sync.errors import StoreError
from sync.model import StoredEntry
from sync.store.postgres.connect import connect, holder_id, options, redact, short
from sync.store.postgres.entries import select_entries
from sync.store.postgres.passes import select_states
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
from sync.store.text import fold

if TYPE_CHECKING:
    from sync.config import StorageConfig

__all__ = ["PostgresReader", "like_pattern"]

# ts_rank_cd weights {D namespace, C description, B title and packages, A name}, and its
# normalisation: 1 divides by 1 + log(length), so a short name-and-title match outranks a
# long description mentioning the word once.
RANK_WEIGHTS = "{0.1, 0.2, 0.6, 1.0}"
RANK_NORM = 1

_ITEM = (
    "SELECT s.name, s.version, e.server, s.meta FROM served s JOIN entries e ON e.id = s.entry_id"
)
NUL = "\0"
Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def like_pattern(term: str) -> str:
    """A LIKE pattern matching `term` as a literal substring: `\\`, `%` and `_` escaped."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def _read_only(conn: Conn) -> None:
    await conn.execute("SET default_transaction_read_only = on")


class PostgresReader:
    def __init__(
        self, pool: AsyncConnectionPool[Conn], dsn: str, *, sort_delta_max: int = 5000
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self.sort_delta_max = sort_delta_max
        self._serial_conn: Conn | None = None

    @classmethod
    async def open(cls, storage: StorageConfig, connections: int | None = None) -> PostgresReader:
        """A pool of `connections` (default `[storage] pool_size`) read-only connections,
        opened now so that an unreachable database fails here."""
        assert storage.url is not None
        # One plain connection first: an unreachable database fails now, with the server's
        # reason, rather than after the pool's timeout of retries.
        await (await connect(storage.url, holder_id())).close()
        size = connections or storage.pool_size
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            storage.url,
            min_size=size,
            max_size=size,
            kwargs={"autocommit": True, **options(holder_id())},
            configure=_read_only,
            open=False,
            name="subregistry-read",
        )
        try:
            await pool.open(wait=True, timeout=30)
        except Exception as exc:  # psycopg_pool's PoolTimeout, or a psycopg error
            await pool.close()
            raise StoreError(f"cannot open {redact(storage.url)} read-only: {short(exc)}") from None
        return cls(pool, storage.url)

    async def close(self) -> None:
        if self._serial_conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._serial_conn.close()
        await self._pool.close()

    async def _all(self, sql: str, params: tuple[object, ...] | list[object] = ()) -> list[Any]:
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"{redact(self._dsn)}: {short(exc)}") from None

    # --- the served view -----------------------------------------------------------------

    async def list_servers(self, q: ListQuery) -> list[ServedItem]:
        """Up to `q.limit + 1` items in (name, version) order, so callers can tell if more exist."""
        sql, params = await self._list_sql(q)
        return [tuple(r) for r in await self._all(sql, params)]

    async def plan(self, q: ListQuery) -> list[str]:
        """PostgreSQL's plan for a list query: how ops (and tests) see that it uses indexes."""
        sql, params = await self._list_sql(q)
        return [str(row[0]) for row in await self._all(f"EXPLAIN {sql}", params)]

    async def _small_delta(self, view: str, since: str) -> bool:
        """Whether at most `sort_delta_max` rows changed since `since`, counted through the
        time index and never past the threshold."""
        rows = await self._all(
            "SELECT count(*) FROM (SELECT 1 FROM served WHERE view = %s AND updated_at > %s "
            "LIMIT %s) AS changed",
            (view, since, self.sort_delta_max + 1),
        )
        return int(rows[0][0]) <= self.sort_delta_max

    async def _list_sql(self, q: ListQuery) -> tuple[str, list[object]]:
        where: list[str] = ["s.view = %s"]
        params: list[object] = [q.view]
        if q.after is not None:
            name, version = q.after
            # PostgreSQL text cannot hold NUL, so no stored name or version contains one.
            # Against such values "after x<NUL>…" is "after x" (nothing sorts between), and
            # "after the name x<NUL>…" is "after every version of x".
            if NUL in name:
                name, version = name[: name.index(NUL)], None
            elif version is not None and NUL in version:
                version = version[: version.index(NUL)]
            if version is None:
                where.append("s.name > %s")
                params.append(name)
            else:
                where.append("(s.name, s.version) > (%s, %s)")
                params += [name, version]
        if not q.include_deleted:
            where.append("s.status != 'deleted'")
        if q.version == "latest":
            where.append("s.is_latest = 1")
        elif q.version is not None:
            where.append("s.version = %s" if NUL not in q.version else "false")
            params += [] if NUL in q.version else [q.version]
        changed = ""
        if q.updated_since is not None:
            since = q.updated_since.partition(NUL)[0]
            if await self._small_delta(q.view, since):
                # An incremental pull reads few rows: find them by time, then sort them. The
                # planner's estimate for a range of text stamps near the end is too coarse to
                # choose this itself (it would walk every name to find the 20 rows changed).
                changed = (
                    "WITH changed AS MATERIALIZED (SELECT id FROM served "
                    "WHERE view = %s AND updated_at > %s) "
                )
                where.append("s.id IN (SELECT id FROM changed)")
                params = [q.view, since, *params]
            else:
                # A pull from long ago reads most rows: walk the name index and filter.
                where.append("s.updated_at > %s")
                params.append(since)
        if q.search and NUL in q.search:
            where.append("false")  # no stored text contains NUL (see above)
        elif q.search:
            # Both sides folded (the rows when written); a literal substring, found through
            # the trigram indexes on the folded columns (a term under 3 characters has no
            # trigram to look up, and walks the name index instead).
            pattern = like_pattern(fold(q.search))
            where.append("(s.search_name LIKE %s OR s.search_description LIKE %s)")
            params += [pattern, pattern]
        sql = f"{changed}{_ITEM} WHERE {' AND '.join(where)} ORDER BY s.name, s.version LIMIT %s"
        return sql, [*params, q.limit + 1]

    async def ranked(
        self, view: str, terms: Sequence[str], limit: int, offset: int, *, latest: bool = True
    ) -> list[RankedItem]:
        """As the SQLite reader's, ranked by `ts_rank_cd` with weights by field (name, title
        and packages, description, namespace) and length normalisation."""
        if not terms:
            return []
        # Each term a quoted lexeme with a prefix mark: words hold only letters and digits,
        # and quoting keeps even those from ever reading as tsquery syntax.
        query = " & ".join("'" + t.replace("'", "''").replace("\\", "\\\\") + "':*" for t in terms)
        latest_only = "AND s.is_latest = 1" if latest else ""
        rows = await self._all(
            "SELECT s.name, s.version, e.server, s.meta, "
            f"ts_rank_cd(%s::real[], r.doc, q, {RANK_NORM}) AS score "
            "FROM to_tsquery('simple', %s) AS q "
            "JOIN served_rank r ON r.doc @@ q JOIN served s ON s.id = r.id "
            "JOIN entries e ON e.id = s.entry_id "
            f"WHERE s.view = %s AND s.status != 'deleted' {latest_only} "
            "ORDER BY score DESC, s.name, s.version LIMIT %s OFFSET %s",
            (RANK_WEIGHTS, query, view, limit, offset),
        )
        return [((r[0], r[1], r[2], r[3]), float(r[4])) for r in rows]

    async def versions(self, view: str, name: str, *, include_deleted: bool) -> list[ServedItem]:
        if NUL in name:
            return []  # no stored name contains NUL (PostgreSQL text cannot)
        hidden = "" if include_deleted else "AND s.status != 'deleted'"
        rows = await self._all(
            f"{_ITEM} WHERE s.view = %s AND s.name = %s {hidden} "
            "ORDER BY s.published_ts DESC, s.version DESC",
            (view, name),
        )
        return [tuple(r) for r in rows]

    async def version(
        self, view: str, name: str, version: str, *, include_deleted: bool
    ) -> ServedItem | None:
        if NUL in name or NUL in version:
            return None  # no stored name or version contains NUL (PostgreSQL text cannot)
        hidden = "" if include_deleted else "AND s.status != 'deleted'"
        if version == "latest":
            sql = f"{_ITEM} WHERE s.view = %s AND s.name = %s AND s.is_latest = 1 {hidden}"
            rows = await self._all(sql, (view, name))
        else:
            sql = f"{_ITEM} WHERE s.view = %s AND s.name = %s AND s.version = %s {hidden}"
            rows = await self._all(sql, (view, name, version))
        return tuple(rows[0]) if rows else None

    async def export(self, view: str, batch: int = 500) -> AsyncIterator[ServedItem]:
        """Every served row, deleted ones included, in bounded batches."""
        async for row in export_rows(self.list_servers, view, batch):
            yield row

    async def served_counts(self, view: str) -> tuple[dict[str, int], int]:
        """Versions per served status, and names with a visible version."""
        rows = await self._all(
            "SELECT status, count(*) FROM served WHERE view = %s GROUP BY status", (view,)
        )
        names = await self._all(
            "SELECT count(DISTINCT name) FROM served WHERE view = %s AND status != 'deleted'",
            (view,),
        )
        return {r[0]: int(r[1]) for r in rows}, int(names[0][0])

    # --- operations -------------------------------------------------------------------------

    async def _with(self, use: Any) -> Any:
        try:
            async with self._pool.connection() as conn:
                return await use(conn)
        except psycopg.Error as exc:
            raise StoreError(f"{redact(self._dsn)}: {short(exc)}") from None

    async def upstream_states(self) -> dict[str, UpstreamState]:
        states: list[UpstreamState] = await self._with(select_states)
        return {s.name: s for s in states}

    async def entries_for(self, names: Iterable[str]) -> list[StoredEntry]:
        wanted = list(names)
        found: list[StoredEntry] = await self._with(lambda conn: select_entries(conn, wanted))
        return found

    async def held(self) -> dict[str, tuple[int, int]]:
        """Per upstream: versions held (not removed) and versions marked removed."""
        rows = await self._all(
            "SELECT upstream, count(*) FILTER (WHERE removed_at IS NULL), "
            "count(*) FILTER (WHERE removed_at IS NOT NULL) FROM entries GROUP BY upstream"
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    async def passes(self, upstream: str | None = None, limit: int = 10) -> list[PassRecord]:
        where, params = ("WHERE upstream = %s", (upstream,)) if upstream else ("", ())
        rows = await self._all(
            f"SELECT {PASS_COLUMNS} FROM passes {where} ORDER BY id DESC LIMIT %s",
            (*params, limit),
        )
        return [PassRecord.from_row(r) for r in rows]

    async def quarantine(self, upstream: str | None = None) -> list[QuarantineRecord]:
        where, params = ("WHERE upstream = %s", (upstream,)) if upstream else ("", ())
        rows = await self._all(
            f"SELECT upstream, key, reason, raw, first_seen, last_seen FROM quarantine {where} "
            "ORDER BY upstream, key",
            params,
        )
        return [QuarantineRecord(*r) for r in rows]

    async def quarantine_counts(self) -> dict[str, int]:
        rows = await self._all("SELECT upstream, count(*) FROM quarantine GROUP BY upstream")
        return {r[0]: int(r[1]) for r in rows}

    async def rule_hits(self, view: str) -> dict[str, int]:
        rows = await self._all("SELECT rule, hits FROM rule_hits WHERE view = %s", (view,))
        return {r[0]: int(r[1]) for r in rows}

    # --- leadership -------------------------------------------------------------------------

    async def leader(self) -> LeaderRecord | None:
        rows = await self._all(
            "SELECT expires_at > now(), holder, epoch, since, expires_at, serial "
            "FROM leadership WHERE id = 1"
        )
        if not rows:
            return LeaderRecord(False, None, 0, None, None, 0)
        leading, holder, epoch, since, until, serial = rows[0]
        return LeaderRecord(bool(leading), holder, int(epoch), since, until, int(serial))

    async def change_serial(self) -> int | None:
        conn = self._serial_conn
        if conn is None or conn.closed or conn.broken:
            conn = self._serial_conn = await connect(self._dsn, holder_id())
        try:
            cursor = await conn.execute("SELECT serial FROM leadership WHERE id = 1")
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"{redact(self._dsn)}: {short(exc)}") from None
        return int(row[0]) if row else 0
