"""Writer side: the served views and the rules' hit counts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import aiosqlite

from sync.model import ExistingServed, ServedRow
from sync.store.sqlite.queries import select_by_names
from sync.store.sqlite.schema import SEARCH_TRIGGER_NAMES, SEARCH_TRIGGERS, statements
from sync.store.text import fold

__all__ = ["ServedWrites"]

_SEARCH_STATE = "search_index"  # "stale" while the full-text index waits for a rebuild


class ServedWrites:
    """Mixed into Store; every method runs inside the caller's transaction."""

    _db: aiosqlite.Connection

    def stamp(self) -> str:
        raise NotImplementedError

    async def served_state(
        self, view: str, names: Iterable[str]
    ) -> dict[tuple[str, str], ExistingServed]:
        rows = await select_by_names(
            self._db,
            "SELECT name, version, entry_id, form FROM served WHERE view = ? AND name IN ({names})",
            (view,),
            names,
        )
        return {(n, v): ExistingServed(entry_id, form) for n, v, entry_id, form in rows}

    async def served_states(
        self, views: Sequence[str], names: Iterable[str]
    ) -> dict[str, dict[tuple[str, str], ExistingServed]]:
        found: dict[str, dict[tuple[str, str], ExistingServed]] = {view: {} for view in views}
        if not views:
            return found
        marks = ",".join("?" * len(views))
        rows = await select_by_names(
            self._db,
            "SELECT view, name, version, entry_id, form FROM served "
            f"WHERE view IN ({marks}) AND name IN ({{names}})",
            tuple(views),
            names,
        )
        for view, n, v, entry_id, form in rows:
            found[view][(n, v)] = ExistingServed(entry_id, form)
        return found

    async def drop_view(self, view: str) -> int:
        async with self._db.execute("DELETE FROM served WHERE view = ?", (view,)) as cursor:
            dropped = cursor.rowcount
        await self.reset_rule_hits(view)
        await self._db.execute("DELETE FROM settings WHERE key = ?", (f"rules_digest:{view}",))
        return dropped

    async def write_served(
        self,
        view: str,
        rows: Sequence[ServedRow],
        existing: Mapping[tuple[str, str], ExistingServed],
    ) -> int:
        """Write the rows whose served form changed; each gets a fresh mirror `updatedAt`.

        A row's `meta` leaves its first `"{stamp}"` for the mirror time allocated here, so the
        served bytes are rendered once, at write time, never per request. The folded name and
        description are computed here too, so that search never folds a row per request.
        """
        writes: list[tuple[object, ...]] = []
        for row in rows:
            before = existing.get((row.name, row.version))
            if before is not None and before.form == row.form:
                continue
            stamp = self.stamp()
            writes.append(
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
                    fold(row.name),
                    fold(row.description),
                    row.form,
                    row.meta.replace('"{stamp}"', f'"{stamp}"', 1),
                )
            )
        if writes:
            await self._db.executemany(
                "INSERT INTO served (view, name, version, entry_id, upstream, status, is_latest, "
                "published_ts, updated_at, description, search_name, search_description, form, "
                "meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (view, name, version) DO UPDATE SET entry_id = excluded.entry_id, "
                "upstream = excluded.upstream, status = excluded.status, "
                "is_latest = excluded.is_latest, published_ts = excluded.published_ts, "
                "updated_at = excluded.updated_at, description = excluded.description, "
                "search_name = excluded.search_name, "
                "search_description = excluded.search_description, "
                "form = excluded.form, meta = excluded.meta",
                writes,
            )
        return len(writes)

    async def add_rule_hits(self, view: str, hits: Mapping[str, int]) -> None:
        if not any(hits.values()):
            return  # a round trip to the writer thread saved on every page without hits
        await self._db.executemany(
            "INSERT INTO rule_hits (view, rule, hits) VALUES (?, ?, ?) "
            "ON CONFLICT (view, rule) DO UPDATE SET hits = hits + excluded.hits",
            [(view, rule, n) for rule, n in hits.items() if n],
        )

    async def reset_rule_hits(self, view: str) -> None:
        await self._db.execute("DELETE FROM rule_hits WHERE view = ?", (view,))

    async def setting(self, key: str) -> str | None:
        async with self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def set_setting(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def settings_under(self, prefix: str) -> dict[str, str]:
        async with self._db.execute(
            "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        ) as cursor:
            return {str(k): str(v) async for k, v in cursor}

    async def served_is_empty(self) -> bool:
        async with self._db.execute("SELECT 1 FROM served LIMIT 1") as cursor:
            return await cursor.fetchone() is None

    async def suspend_search_index(self) -> None:
        """Stop row-by-row upkeep of the full-text index (for a first full sync); readers
        fall back to scanning until `rebuild_search_index` runs."""
        for name in SEARCH_TRIGGER_NAMES:
            await self._db.execute(f"DROP TRIGGER IF EXISTS {name}")
        await self.set_setting(_SEARCH_STATE, "stale")

    async def rebuild_search_index(self) -> bool:
        """Build the full-text index in one go if it was suspended; True if it ran."""
        if await self.setting(_SEARCH_STATE) != "stale":
            return False
        await self._db.execute("INSERT INTO served_search (served_search) VALUES ('rebuild')")
        for statement in statements(SEARCH_TRIGGERS):
            await self._db.execute(statement)
        await self.set_setting(_SEARCH_STATE, "ready")
        return True
