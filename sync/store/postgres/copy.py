"""`subregistry copy --to`: a SQLite mirror into an empty PostgreSQL database, whole.

What moves is everything a daemon needs to continue where the SQLite one stands: entries with
their ids (served rows point at them), served views with their stamps, upstream checkpoints
including an unfinished pass's resume point, pending names, quarantine, pass history, rule hits
and settings. The target then continues incrementally instead of refetching the world.

The source is read in one read transaction (a consistent snapshot, even while a daemon writes
the file), the target written in one transaction (all or nothing: a copy killed half-way leaves
the database as empty as it found it), both streamed in batches (memory stays bounded whatever
the mirror's size), under the leadership of the database like any other writer of it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosqlite
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError

from sync.config import StorageConfig
from sync.errors import ConfigError, NotLeader, StoreError
from sync.store.postgres.connect import holder_id, options, redact
from sync.store.postgres.leader import Leadership
from sync.store.postgres.schema import migrate
from sync.store.postgres.writer import FENCE

__all__ = ["TABLES", "CopyResult", "TargetNotEmpty", "check_target", "copy_mirror"]

# Every table of a mirror, each with the key it is read in (the target's indexes then fill in
# order). `leadership` and the migration records belong to the database, not to the mirror.
TABLES: Sequence[tuple[str, str]] = (
    ("entries", "id"),
    ("served", "id"),
    ("upstreams", "name"),
    ("passes", "id"),
    ("pass_pending", "upstream, name"),
    ("quarantine", "upstream, key"),
    ("rule_hits", "view, rule"),
    ("settings", "key"),
)
_SERIAL = ("entries", "served", "passes")  # ids copied as they are; sequences continue after them
BATCH = 1000
NUL, REPLACEMENT = "\0", "\ufffd"


class TargetNotEmpty(StoreError):
    """The target already holds a mirror: a copy never merges into, or replaces, one."""


@dataclass(frozen=True)
class CopyResult:
    source: Path
    target: str
    counts: dict[str, int]
    seconds: float

    def summary(self) -> str:
        c = self.counts

        def n(count: int, one: str, many: str) -> str:
            return f"{count} {one if count == 1 else many}"

        return (
            f"copied {self.source} to {self.target}: {n(c['entries'], 'entry', 'entries')}, "
            f"{n(c['served'], 'served row', 'served rows')}, "
            f"{n(c['upstreams'], 'upstream', 'upstreams')}, {n(c['passes'], 'pass', 'passes')}, "
            f"{n(c['pass_pending'], 'pending name', 'pending names')}, "
            f"{c['quarantine']} quarantined, {n(c['rule_hits'], 'rule hit', 'rule hits')}, "
            f"{n(c['settings'], 'setting', 'settings')} in {self.seconds:.1f} s"
        )


def check_target(dsn: str) -> None:
    """ConfigError naming `--to` for a URL that `[storage] url` would refuse (the replicas are
    given it next), or that libpq (or our messages) could not read."""
    try:
        StorageConfig(url=dsn)
        conninfo_to_dict(dsn)
        urlsplit(dsn).port  # noqa: B018 (parsing it is the check)
    except (ValidationError, psycopg.Error, ValueError):
        raise ConfigError(
            "--to: must be a PostgreSQL URL such as postgresql://user@host:5432/db"
        ) from None


def _is_file(path: Path) -> bool:
    return path.is_file()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def copy_mirror(source: Path, dsn: str, *, lease: float, batch: int = BATCH) -> CopyResult:
    """Copy the SQLite mirror at `source` into the empty database at `dsn`; raises StoreError
    (TargetNotEmpty, NotLeader, or any failure of either database) with nothing written."""
    where = redact(dsn)
    if not _is_file(source):
        raise StoreError(f"no SQLite mirror at {source} ([storage] path)")
    started = time.monotonic()
    holder = holder_id()
    try:
        async with _source(source) as src:
            async with await _connect(dsn, holder) as first:
                await migrate(first)
                # Before leading: refusing a mirror must not even bump its epoch.
                await _refuse_a_mirror(first, where)
                columns = await _columns(src, first, source)
            async with (
                _leading(dsn, where, holder, lease) as leading,
                await _connect(dsn, holder) as dst,
            ):
                # A stalled copy must not hold its locks for longer than a leader could.
                await dst.execute(
                    "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                    (f"{int(lease * 1000)}ms",),
                )
                async with dst.transaction():
                    await _refuse_a_mirror(dst, where)  # again: now nobody else writes
                    counts = {
                        table: await _copy_table(src, dst, table, key, columns[table], batch)
                        for table, key in TABLES
                    }
                    for table in _SERIAL:
                        await dst.execute(
                            sql.SQL(
                                "SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                                "coalesce(max(id), 1), max(id) IS NOT NULL) FROM {}"
                            ).format(sql.Identifier(table)),
                            (table,),
                        )
                    await _fence(dst, leading)
    except sqlite3.Error as exc:
        raise StoreError(f"{source}: {_first_line(exc)}") from None
    except psycopg.Error as exc:
        raise StoreError(f"{where}: {_first_line(exc)}") from None
    return CopyResult(source, where, counts, time.monotonic() - started)


@contextlib.asynccontextmanager
async def _source(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """The file read-only, inside one read transaction: every table from the same snapshot."""
    db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        await db.execute("BEGIN")
        # A WAL read transaction takes its snapshot at its first read, not at BEGIN.
        async with db.execute("SELECT count(*) FROM sqlite_master") as cursor:
            await cursor.fetchone()
        yield db
    finally:
        with contextlib.suppress(sqlite3.Error):
            await db.execute("ROLLBACK")
        await db.close()


async def _connect(dsn: str, holder: str) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    # Named as every connection of a writer is (a successor can end our backends should we
    # stall while leading), and without prepared statements (PgBouncer in transaction mode).
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, **options(holder))


@contextlib.asynccontextmanager
async def _leading(dsn: str, where: str, holder: str, lease: float) -> AsyncIterator[Leadership]:
    """The leadership, held as every one-shot writer holds it (`leader.held`: renewed
    meanwhile, resigned at the end), with a refusal that says what was refused."""
    leadership = Leadership(dsn, lease=lease, holder=holder)
    try:
        await leadership.acquire()
    except NotLeader as exc:
        raise NotLeader(f"cannot copy into {where}: {exc}") from None
    leadership.start()
    try:
        yield leadership
    finally:
        await leadership.stop()


async def _fence(conn: psycopg.AsyncConnection[tuple[Any, ...]], leading: Leadership) -> None:
    """The writers' fence, inside the copy's transaction just before it commits: a copy whose
    leadership lapsed (stalled past its lease, taken over) commits nothing."""
    cursor = await conn.execute(FENCE, (leading.epoch, leading.holder))
    if cursor.rowcount != 1:
        raise NotLeader(
            "lost the leadership of the database during the copy (another process took "
            "it over): nothing was written"
        )


async def _columns(
    src: aiosqlite.Connection, dst: psycopg.AsyncConnection[tuple[Any, ...]], path: Path
) -> dict[str, list[tuple[str, str]]]:
    """Each table's columns (name, PostgreSQL type), the same set on both sides: a column that
    only one side has would be lost or left empty, so it stops the copy before it starts."""
    found: dict[str, list[tuple[str, str]]] = {}
    for table, _ in TABLES:
        cursor = await dst.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
            (table,),
        )
        target = [(str(name), str(kind)) for name, kind in await cursor.fetchall()]
        async with src.execute(f"PRAGMA table_info({table})") as info:
            source = {str(row[1]) for row in await info.fetchall()}
        names = {name for name, _ in target}
        if not source:
            raise StoreError(f"{path} has no table {table}: it is not a subregistry mirror")
        if source != names:
            missing, extra = sorted(names - source), sorted(source - names)
            detail = "; ".join(
                part
                for part in (
                    f"the SQLite mirror lacks {', '.join(missing)}" if missing else "",
                    f"PostgreSQL lacks {', '.join(extra)}" if extra else "",
                )
                if part
            )
            raise StoreError(
                f"table {table} differs between the two schemas ({detail}): "
                "run `subregistry sync` once with this release on the SQLite mirror first"
            )
        found[table] = target
    return found


async def _refuse_a_mirror(dst: psycopg.AsyncConnection[tuple[Any, ...]], where: str) -> None:
    held = []
    for table, _ in TABLES:
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
        row = await (await dst.execute(query)).fetchone()
        if row is not None and row[0]:
            held.append(table)
    if held:
        raise TargetNotEmpty(
            f"{where} already holds a mirror (rows in {', '.join(held)}): "
            "copy only into an empty database; nothing was written"
        )


async def _copy_table(
    src: aiosqlite.Connection,
    dst: psycopg.AsyncConnection[tuple[Any, ...]],
    table: str,
    key: str,
    columns: list[tuple[str, str]],
    batch: int,
) -> int:
    names = [name for name, _ in columns]
    # SQLite has no boolean: its 0 and 1 become PostgreSQL's false and true.
    flags = [i for i, (_, kind) in enumerate(columns) if kind == "boolean"]
    # PostgreSQL text cannot hold NUL, which SQLite's can (a description decoded from a
    # `\u0000` escape): it becomes U+FFFD, as the PostgreSQL store writes such text. JSON
    # columns, what the API serves, hold the escape itself and are unchanged.
    texts = [i for i, (_, kind) in enumerate(columns) if kind == "text"]
    select = f"SELECT {', '.join(names)} FROM {table} ORDER BY {key}"
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    count = 0
    async with (
        src.execute(select) as rows,
        dst.cursor() as cursor,
        cursor.copy(statement) as copy,
    ):
        while chunk := list(await rows.fetchmany(batch)):
            for row in chunk:
                values: list[Any] = list(row)
                for i in flags:
                    values[i] = None if values[i] is None else bool(values[i])
                for i in texts:
                    if isinstance(values[i], str) and NUL in values[i]:
                        values[i] = values[i].replace(NUL, REPLACEMENT)
                await copy.write_row(values)
            count += len(chunk)
    return count
