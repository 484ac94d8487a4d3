"""Plain records that cross the store boundary (no SQL, no I/O)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

__all__ = [
    "PASS_COLUMNS",
    "LeaderRecord",
    "ListQuery",
    "PassCounts",
    "PassRecord",
    "QuarantineRecord",
    "ServedItem",
    "Sweep",
    "UpstreamState",
    "export_rows",
]


@dataclass(slots=True)
class PassCounts:
    pages: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    quarantined: int = 0
    # Entries this pass had already seen (in memory only): how a listing that goes round in
    # circles with fresh cursors is told from a long one.
    repeated: int = 0

    def add(self, other: PassCounts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Sweep(NamedTuple):
    """What the reconcile after a full listing found."""

    held: int
    seen: int
    counted: bool  # False: the listing saw under half of what is held, and decided nothing
    removed: int = 0
    absent_once: int = 0  # missed by this listing, kept until the next one agrees
    names: frozenset[str] | set[str] = frozenset()


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """What the mirror knows about one upstream, including a pass left unfinished."""

    name: str
    checkpoint: str | None = None
    last_full_at: str | None = None
    last_success_at: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    failures: int = 0
    circuit_until: str | None = None
    pass_id: int | None = None
    pass_mode: str | None = None
    pass_started: str | None = None
    pass_since: str | None = None
    pass_cursor: str | None = None
    pass_sweep: int | None = None
    source_digest: str | None = None
    failing_since: str | None = None
    pass_last_name: str | None = None
    pass_unordered: bool = False


# The columns of `passes` a PassRecord is read from, in `PassRecord.from_row` order.
PASS_COLUMNS = (
    "id, upstream, mode, started_at, ended_at, outcome, pages, inserted, updated, unchanged, "
    "removed, quarantined, error, checkpoint, resumed_from"
)
_PASS_COUNTS = ("pages", "inserted", "updated", "unchanged", "removed", "quarantined")


@dataclass(frozen=True, slots=True)
class PassRecord:
    id: int
    upstream: str
    mode: str
    started_at: str
    ended_at: str | None
    outcome: str
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    checkpoint: str | None = None
    resumed_from: int | None = None

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> PassRecord:
        """A record from a row of `SELECT {PASS_COLUMNS} FROM passes`, on either backend."""
        return cls(
            id=r[0],
            upstream=r[1],
            mode=r[2],
            started_at=r[3],
            ended_at=r[4],
            outcome=r[5],
            counts={name: int(n) for name, n in zip(_PASS_COUNTS, r[6:12], strict=True)},
            error=r[12],
            checkpoint=r[13],
            resumed_from=r[14],
        )


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    upstream: str
    key: str
    reason: str
    raw: str
    first_seen: str
    last_seen: str


ServedItem = tuple[str, str, str, str]  # name, version, server JSON, _meta JSON


@dataclass(frozen=True, slots=True)
class ListQuery:
    view: str
    limit: int
    # (name, version): after that position; (name, None): after every version of that name.
    after: tuple[str, str | None] | None = None
    search: str | None = None
    updated_since: str | None = None
    version: str | None = None
    include_deleted: bool = False


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    """Who writes a shared store, as the database says now (`leading` false: nobody does; the
    last holder resigned or its lease ran out)."""

    leading: bool
    holder: str | None
    epoch: int
    since: datetime | None
    lease_until: datetime | None
    serial: int


async def export_rows(
    list_servers: Callable[[ListQuery], Awaitable[list[ServedItem]]], view: str, batch: int
) -> AsyncIterator[ServedItem]:
    """Every served row of `view`, deleted ones included, in batches of `batch` through a
    reader's `list_servers`: memory bounded by a batch, on either backend."""
    after: tuple[str, str] = ("", "")
    while True:
        rows = await list_servers(ListQuery(view, batch - 1, after=after, include_deleted=True))
        for row in rows:
            yield row
        if len(rows) < batch:
            return
        after = (rows[-1][0], rows[-1][1])
