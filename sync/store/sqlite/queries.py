"""SQL shared by the writer and the readers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from sync.model import StoredEntry
from sync.store.records import UpstreamState

__all__ = [
    "STATE_COLUMNS",
    "select_by_names",
    "select_entries",
    "select_states",
]

ENTRY_COLUMNS = (
    "id, upstream, name, version, server, meta, status, status_message, status_changed_at, "
    "published_at, upstream_updated_at, description, stored_at, first_seen_at, removed_at"
)
STATE_COLUMNS = (
    "name, checkpoint, last_full_at, last_success_at, last_error, last_error_at, failures, "
    "circuit_until, pass_id, pass_mode, pass_started, pass_since, pass_cursor, pass_sweep, "
    "source_digest, failing_since, pass_last_name, pass_unordered"
)
# SQLite allows 32766 bound parameters; stay far below it per statement.
_CHUNK = 500


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def select_by_names(
    db: aiosqlite.Connection, sql: str, params: tuple[object, ...], names: Iterable[str]
) -> list[Any]:
    """Run `sql`, whose `{names}` stands for the name placeholders, over `names` in bounded
    chunks; `params` bind before the names."""
    rows: list[Any] = []
    for chunk in _chunks(sorted(set(names))):
        marks = ",".join("?" * len(chunk))
        async with db.execute(sql.format(names=marks), (*params, *chunk)) as cursor:
            rows.extend(await cursor.fetchall())
    return rows


async def select_entries(
    db: aiosqlite.Connection, names: Iterable[str], *, with_server: bool = True
) -> list[StoredEntry]:
    """Every stored version of these names, from every upstream. Without `with_server` the
    server JSON is left out ('') for callers that only need the facts: it is the bulk."""
    columns = ENTRY_COLUMNS if with_server else ENTRY_COLUMNS.replace(" server,", " '',")
    sql = f"SELECT {columns} FROM entries WHERE name IN ({{names}})"
    return [StoredEntry(*row) for row in await select_by_names(db, sql, (), names)]


async def select_states(db: aiosqlite.Connection, name: str | None = None) -> list[UpstreamState]:
    where, params = ("WHERE name = ?", (name,)) if name else ("", ())
    async with db.execute(f"SELECT {STATE_COLUMNS} FROM upstreams {where}", params) as cursor:
        return [UpstreamState(*row) for row in await cursor.fetchall()]
