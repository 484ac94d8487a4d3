"""Which replica writes a shared PostgreSQL store: a lease, held by one process at a time.

Leading takes BOTH the session advisory lock `LEADER_LOCK` on a dedicated connection AND the
`leadership` row naming the holder, with an `epoch` that every takeover bumps and an
`expires_at` (the database's clock) that the leader renews every lease/3. The lock alone is not
enough: a leader that stalls (SIGSTOP, a paused VM, a partition) keeps its session, and so its
lock, for as long as the server keeps the session. The row lets a follower see that the lease
ran out, terminate the stalled holder's backends (every connection of a process carries
`application_name = "subregistry " + holder`), and take over. Every commit of the writer is
fenced on the row (see `sync.store.postgres` and the issue #12 contract): once the lease has
expired or the epoch has moved on, the old leader's commits are refused, whatever it believes.

A leader learns that it was deposed at its next renewal (at most lease/3 later) and says so
through `deposed(reason)`; a clean stop resigns (`expires_at = now()`, unlock), so that a
follower takes over at its next try rather than after a whole lease. A database that cannot be
reached is retried with a capped backoff; a leader that loses it is deposed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import structlog

from sync.errors import NotLeader, StoreError
from sync.store.postgres.connect import application_name, holder_id, options, redact
from sync.store.postgres.schema import LEADER_LOCK

__all__ = [
    "Leader",
    "Leadership",
    "application_name",
    "current",
    "held",
    "holder_id",
]

log = structlog.get_logger("sync.store.postgres.leader")

_BACKOFF = (0.2, 5.0)  # reconnecting to an unreachable database: first delay, cap

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Elected = Callable[[int], Awaitable[None]]
Deposed = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Leader:
    """The `leadership` row as the database has it now."""

    epoch: int
    holder: str | None
    since: datetime | None
    expires_at: datetime | None
    expired: bool
    serial: int


async def current(conn: Conn) -> Leader:
    """Who leads (or last led) according to the database, and whether that lease still runs."""
    cursor = await conn.execute(
        "SELECT epoch, holder, since, expires_at, coalesce(expires_at <= now(), true), serial "
        "FROM leadership WHERE id = 1"
    )
    row = await cursor.fetchone()
    if row is None:  # the migration inserts it; a hand-edited database may lack it
        return Leader(0, None, None, None, True, 0)
    return Leader(int(row[0]), row[1], row[2], row[3], bool(row[4]), int(row[5]))


async def connect(dsn: str, holder: str, *, statement_timeout: float) -> Conn:
    """An autocommit connection named after `holder`, whose statements cannot hang the caller
    for longer than `statement_timeout` (a lock wait behind a stalled writer included)."""
    settings = options(holder) | {"connect_timeout": max(2, int(statement_timeout + 0.999))}
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, **settings)
    await conn.execute(
        "SELECT set_config('statement_timeout', %s, false)", (str(int(statement_timeout * 1000)),)
    )
    return conn


class Leadership:
    """One process's candidacy: follows, takes over when it can, leads, renews, resigns.

    `start()` runs it in the background; `elected(epoch)` and `deposed(reason)` are awaited in
    the order they happen, one at a time, on a task of their own: a slow callback never delays
    a renewal (a leader that misses its renewals is deposed).
    """

    def __init__(
        self,
        dsn: str,
        *,
        lease: float,
        holder: str | None = None,
        elected: Elected | None = None,
        deposed: Deposed | None = None,
    ) -> None:
        self.dsn = dsn
        self.lease = lease
        self.holder = holder or holder_id()
        self._elected = elected
        self._deposed = deposed
        self.epoch: int | None = None  # while leading
        self._conn: Conn | None = None
        self._task: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._notifier: asyncio.Task[None] | None = None
        self._unreachable = False
        self._withdrawn = False
        self._step_down: str | None = None

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    @property
    def renew_every(self) -> float:
        return self.lease / 3

    @property
    def try_every(self) -> float:
        """A follower's attempts: about ten per lease, and at least one a second."""
        return min(1.0, self.lease / 10)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leadership")
        self._notifier = asyncio.create_task(self._notify(), name="leadership-events")

    def withdraw(self) -> None:
        """Take over no more (a leader still renews): the process is stopping."""
        self._withdrawn = True

    def step_down(self, reason: str) -> None:
        """Resign at the next renewal and compete again: this process cannot write now."""
        self._step_down = reason

    async def _resign(self) -> None:
        """`expires_at = now()` and unlock: a follower takes over at its next try."""
        await self._query(
            "UPDATE leadership SET expires_at = now() WHERE id = 1 AND epoch = %s AND holder = %s",
            (self.epoch, self.holder),
        )
        await self._query("SELECT pg_advisory_unlock(%s)", (LEADER_LOCK,))

    async def stop(self) -> None:
        """Stop competing; a leader resigns, so that a follower takes over at once.

        Call it once the writer has stopped writing: a commit after the resignation is refused.
        """
        for task in (self._task, self._notifier):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._notifier = None
        if self.epoch is not None and self._conn is not None:
            try:
                await self._resign()
                log.info("leader.resigned", holder=self.holder, epoch=self.epoch)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                # Closing the connection below releases the lock; the lease then runs out.
                log.warning("leader.resign_failed", holder=self.holder, error=str(exc))
        self.epoch = None
        await self._close()

    async def acquire(self) -> int:
        """Lead now or raise NotLeader naming who does: for a one-shot writer (`subregistry
        sync`, `reapply`, `copy --to`), which holds the leadership for its duration and then
        `stop()`s. A holder whose lease expired is terminated first, as a daemon would. A
        database that cannot be reached, or does not answer, is a StoreError naming it."""
        try:
            for _ in range(2):
                if await self._attempt():
                    assert self.epoch is not None
                    return self.epoch
            assert self._conn is not None
            leader = await current(self._conn)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self.epoch = None
            await self._close()  # the lock, if this attempt took it, goes with the session
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
            raise StoreError(
                f"cannot take the leadership of {redact(self.dsn)}: {reason}"
            ) from None
        await self._close()
        raise NotLeader(
            f"another process leads this database ({leader.holder}, epoch {leader.epoch}, "
            f"since {leader.since:%Y-%m-%d %H:%M:%S %Z}): its daemon runs the passes"
            if leader.since is not None
            else "another process holds the leader lock of this database"
        )

    async def _run(self) -> None:
        delay = _BACKOFF[0]
        while True:
            try:
                if self.leading and self._step_down is not None:
                    reason, self._step_down = self._step_down, None
                    await self._resign()
                    await self._close()
                    self._depose(f"stepped down: {reason}")
                    await asyncio.sleep(self.try_every)
                elif self.leading:
                    await self._renew()
                    await asyncio.sleep(self.renew_every)
                elif self._withdrawn:
                    await asyncio.sleep(self.try_every)
                else:
                    await self._attempt()
                    await asyncio.sleep(self.renew_every if self.leading else self.try_every)
                delay = _BACKOFF[0]
                if self._unreachable:
                    self._unreachable = False
                    log.info("leader.database_reachable", holder=self.holder)
            except (psycopg.Error, OSError, TimeoutError, NotLeader) as exc:
                # NotLeader here: the leadership row is missing (a hand-edited database);
                # keep trying, loudly, rather than let the candidacy die unseen.
                await self._close()
                if self.leading:
                    self._depose(f"lost the database connection: {exc}")
                if not self._unreachable:
                    self._unreachable = True
                    log.warning("leader.database_unreachable", holder=self.holder, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])

    async def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the awaited call completes (stop() would hang).
            async with asyncio.timeout(self.lease):
                self._conn = await connect(
                    self.dsn, self.holder, statement_timeout=self.renew_every
                )
        return self._conn

    async def _query(self, query: str, params: tuple[Any, ...] = ()) -> psycopg.AsyncCursor[Any]:
        # The server's statement_timeout covers a slow query; this covers a silent network.
        conn = await self._connection()
        async with asyncio.timeout(self.renew_every + 1):
            return await conn.execute(query, params)

    async def _attempt(self) -> bool:
        """One try at taking over; True when this process now leads."""
        got = await (
            await self._query("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
        ).fetchone()
        if got is not None and got[0]:
            cursor = await self._query(
                "UPDATE leadership SET epoch = epoch + 1, holder = %s, since = now(), "
                "expires_at = now() + make_interval(secs => %s) WHERE id = 1 RETURNING epoch",
                (self.holder, self.lease),
            )
            row = await cursor.fetchone()
            if row is None:
                await self._close()  # no row to hold: the unlock comes with the session's end
                raise NotLeader("the leadership row is missing: migrate the database")
            self.epoch = int(row[0])
            log.info("leader.elected", holder=self.holder, epoch=self.epoch)
            self._events.put_nowait(("elected", self.epoch))
            return True
        leader = await current(await self._connection())
        if leader.expired and leader.holder is not None:
            # Its session still holds the lock, but its lease ran out: it is stalled or cut off,
            # and its commits are refused already. Ending its backends frees the lock (and any
            # row lock a half-done transaction of its holds). The holder may be this very
            # process, whose lock connection died on our side while the server kept its session
            # (a silent network): then only that session goes, not our live readers.
            # Not waiting for them to exit (a backend blocked writing to a stopped client can
            # take a while): the lock is free at one of the next tries.
            cursor = await self._query(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ("
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND %s "
                "UNION SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1"
                ") AS stalled WHERE pid <> pg_backend_pid()",
                (
                    application_name(leader.holder),
                    leader.holder != self.holder,
                    LEADER_LOCK >> 32,
                    LEADER_LOCK & 0xFFFF_FFFF,
                ),
            )
            row = await cursor.fetchone()
            log.warning(
                "leader.stalled_holder_terminated",
                holder=leader.holder,
                epoch=leader.epoch,
                expired_at=str(leader.expires_at),
                backends=int(row[0]) if row else 0,
                by=self.holder,
            )
        return False

    async def _renew(self) -> None:
        assert self.epoch is not None
        cursor = await self._query(
            "UPDATE leadership SET expires_at = now() + make_interval(secs => %s) "
            "WHERE id = 1 AND epoch = %s AND holder = %s AND expires_at > now()",
            (self.lease, self.epoch, self.holder),
        )
        if cursor.rowcount == 0:
            leader = await current(await self._connection())
            # Our session may still hold the lock (a successor that found our lease expired
            # took over): closing it frees the lock for whoever competes next.
            await self._close()
            self._depose(f"the lease was taken over (epoch {leader.epoch}, {leader.holder})")

    def _depose(self, reason: str) -> None:
        log.warning("leader.deposed", holder=self.holder, epoch=self.epoch, reason=reason)
        self.epoch = None
        self._events.put_nowait(("deposed", reason))

    async def _notify(self) -> None:
        while True:
            kind, value = await self._events.get()
            try:
                if kind == "elected" and self._elected is not None:
                    await self._elected(value)
                elif kind == "deposed" and self._deposed is not None:
                    await self._deposed(value)
            except Exception:
                # The candidacy goes on whatever a callback does; the failure must be seen.
                log.exception("leader.callback_failed", event=kind)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


@contextlib.asynccontextmanager
async def held(dsn: str, *, lease: float, holder: str | None = None) -> AsyncIterator[Leadership]:
    """The leadership for a one-shot writer's duration, renewed meanwhile, resigned at the end;
    NotLeader at once when another process leads."""
    leadership = Leadership(dsn, lease=lease, holder=holder)
    await leadership.acquire()
    leadership.start()
    try:
        yield leadership
    finally:
        await leadership.stop()
