"""What the rest of the daemon may ask of a store, whatever holds it.

Two backends implement it: `sqlite` (one file, the embedded default) and `postgres` (one
database shared by replicas, written only by the elected leader). Every behaviour a caller can
observe (ordering, cursors, `updated_since`, search, the counts a pass reports) is the same on
both; the tests run the store-facing suites against each.

The writer's methods run inside `transaction()`: one transaction per page, atomic, undone if the
body fails or is cancelled. On PostgreSQL the commit is fenced: a writer that is no longer the
leader cannot commit (`NotLeader`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from sync.model import Entry, ExistingServed, Rejected, ServedRow, StoredEntry
from sync.store.rank import RankedItem
from sync.store.records import (
    LeaderRecord,
    ListQuery,
    PassCounts,
    PassRecord,
    QuarantineRecord,
    ServedItem,
    Sweep,
    UpstreamState,
)

__all__ = ["Reader", "Store"]


class Store(Protocol):
    """The one writer of a mirror."""

    @property
    def where(self) -> str:
        """The store, for messages and logs (a path, or a DSN without its password)."""

    async def close(self) -> None: ...
    def transaction(self) -> AbstractAsyncContextManager[None]: ...
    def stamp(self) -> str:
        """A mirror `updatedAt` strictly later than every one stored before (by any leader)."""

    async def integrity_check(self) -> str: ...

    # --- passes and checkpoints
    async def state(self, upstream: str) -> UpstreamState: ...
    async def close_interrupted(
        self, now: str, reason: str = ..., *, pass_id: int | None = None
    ) -> int: ...
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
    ) -> int: ...
    async def set_pass_started(self, upstream: str, started: str) -> None: ...
    async def record_page(
        self,
        upstream: str,
        pass_id: int,
        cursor: str | None,
        counts: PassCounts,
        *,
        last_name: str | None = None,
        unordered: bool = False,
    ) -> None: ...
    async def add_pending(self, upstream: str, names: Iterable[str]) -> None: ...
    async def take_pending(self, upstream: str, before: str | None, limit: int) -> list[str]: ...
    async def finish_pass(
        self,
        upstream: str,
        pass_id: int,
        *,
        checkpoint: str | None,
        full: bool,
        now: str,
        source_digest: str | None = None,
    ) -> None: ...
    async def fail_pass(
        self, upstream: str, pass_id: int | None, *, error: str, now: str, circuit_until: str | None
    ) -> None: ...
    async def record_skip(self, upstream: str, *, mode: str, reason: str, now: str) -> None: ...

    # --- raw entries
    async def upsert_entries(
        self, upstream: str, entries: Sequence[Entry], *, sweep: int, now: str
    ) -> tuple[PassCounts, set[str]]: ...
    async def quarantine(self, upstream: str, rejected: Sequence[Rejected], now: str) -> None: ...
    async def mark_all_seen(self, upstream: str, sweep: int) -> int: ...
    async def sweep(self, upstream: str, sweep: int, now: str, *, agree: int = 2) -> Sweep: ...
    async def held_count(self, upstream: str) -> int: ...
    async def entries_for(
        self, names: Iterable[str], *, with_server: bool = True
    ) -> list[StoredEntry]: ...
    async def names_after(self, after: str, limit: int) -> list[str]: ...

    # --- served views
    async def served_state(
        self, view: str, names: Iterable[str]
    ) -> dict[tuple[str, str], ExistingServed]: ...
    async def served_states(
        self, views: Sequence[str], names: Iterable[str]
    ) -> dict[str, dict[tuple[str, str], ExistingServed]]:
        """`served_state` of several views in one read (a page rebuilds every view)."""

    async def drop_view(self, view: str) -> int:
        """Forget a view: its served rows (tombstones too), rule hits and rules digest; the
        number of rows dropped."""

    async def write_served(
        self,
        view: str,
        rows: Sequence[ServedRow],
        existing: Mapping[tuple[str, str], ExistingServed],
    ) -> int: ...
    async def add_rule_hits(self, view: str, hits: Mapping[str, int]) -> None: ...
    async def reset_rule_hits(self, view: str) -> None: ...
    async def setting(self, key: str) -> str | None: ...
    async def set_setting(self, key: str, value: str) -> None: ...
    async def settings_under(self, prefix: str) -> dict[str, str]:
        """Every setting whose key starts with `prefix` (the views' rules digests, say)."""

    async def served_is_empty(self) -> bool: ...
    async def suspend_search_index(self) -> None: ...
    async def rebuild_search_index(self) -> bool: ...


class Reader(Protocol):
    """Read-only access for the API and the reporting commands; never writes, never syncs."""

    async def close(self) -> None: ...
    async def list_servers(self, q: ListQuery) -> list[ServedItem]:
        """Up to `q.limit + 1` items in (name, version) order (bytewise, on every backend)."""

    async def ranked(
        self, view: str, terms: Sequence[str], limit: int, offset: int, *, latest: bool = True
    ) -> list[RankedItem]:
        """Items of `view` (never tombstones; latest versions only unless `latest` is false)
        matching every term as a word prefix, most relevant first, then by (name, version);
        `terms` from `sync.store.rank.words`."""

    async def plan(self, q: ListQuery) -> list[str]:
        """The database's plan for a list query: how tests see that it uses indexes."""

    async def versions(
        self, view: str, name: str, *, include_deleted: bool
    ) -> list[ServedItem]: ...
    async def version(
        self, view: str, name: str, version: str, *, include_deleted: bool
    ) -> ServedItem | None: ...
    def export(self, view: str, batch: int = 500) -> AsyncIterator[ServedItem]: ...
    async def served_counts(self, view: str) -> tuple[dict[str, int], int]: ...
    async def upstream_states(self) -> dict[str, UpstreamState]: ...
    async def entries_for(self, names: Iterable[str]) -> list[StoredEntry]: ...
    async def held(self) -> dict[str, tuple[int, int]]: ...
    async def passes(self, upstream: str | None = None, limit: int = 10) -> list[PassRecord]: ...
    async def quarantine(self, upstream: str | None = None) -> list[QuarantineRecord]: ...
    async def quarantine_counts(self) -> dict[str, int]: ...
    async def rule_hits(self, view: str) -> dict[str, int]: ...
    async def leader(self) -> LeaderRecord | None:
        """Who leads a shared store (None for a store that one process owns)."""

    async def change_serial(self) -> int | None:
        """A number every commit changes, read cheaply (None: the store has another way to
        tell, such as SQLite's file stats); on its own connection, so a busy pool never
        delays it."""
