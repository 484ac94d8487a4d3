"""Leader election on a real PostgreSQL: one leader among contenders, a resignation hands over
at once, a lost connection or a stalled holder is replaced within the lease, epochs only grow,
a deposed leader hears of it, and an unreachable database is waited for."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from structlog.testing import capture_logs

from tests.pg import HAVE_PSYCOPG, unavailable

if not HAVE_PSYCOPG:
    unavailable("psycopg is not installed (pip install -e '.[test]')")

import psycopg

from sync.errors import NotLeader
from sync.store.postgres.leader import Leadership, application_name, current, held, holder_id
from sync.store.postgres.schema import LEADER_LOCK, migrate

LEASE = 2.0
PATIENCE = 30.0  # a test that waits this long has failed; the properties hold far sooner


async def _admin(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


@pytest.fixture
async def db(pg_dsn: str) -> str:
    conn = await _admin(pg_dsn)
    await migrate(conn)
    await conn.close()
    return pg_dsn


class Candidate:
    """A Leadership with a record of what it was told, in order."""

    def __init__(self, dsn: str, lease: float = LEASE, holder: str | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()
        # Each its own holder, as if each were a process of its own.
        self.leadership = Leadership(
            dsn,
            lease=lease,
            holder=holder or f"test/{os.getpid()}/{secrets.token_hex(4)}",
            elected=self._elected,
            deposed=self._deposed,
        )

    async def _elected(self, epoch: int) -> None:
        self.events.append(("elected", epoch))
        self.changed.set()

    async def _deposed(self, reason: str) -> None:
        self.events.append(("deposed", reason))
        self.changed.set()

    @property
    def epochs(self) -> list[int]:
        return [value for kind, value in self.events if kind == "elected"]


async def _until(check: Callable[..., bool | Awaitable[bool]]) -> None:
    async with asyncio.timeout(PATIENCE):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(*candidates: Candidate) -> AsyncIterator[None]:
    for candidate in candidates:
        candidate.leadership.start()
    try:
        yield
    finally:
        for candidate in candidates:
            await candidate.leadership.stop()


def _leaders(candidates: list[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c.leadership.leading]


async def test_one_of_many_contenders_leads_and_the_row_names_it(db: str) -> None:
    candidates = [Candidate(db) for _ in range(4)]
    admin = await _admin(db)
    async with running(*candidates):
        await _until(lambda: len(_leaders(candidates)) == 1)
        # Several renewals and many follower attempts later, still exactly the same one.
        first = _leaders(candidates)[0]
        for _ in range(3):
            await asyncio.sleep(first.leadership.renew_every)
            assert _leaders(candidates) == [first]
        row = await current(admin)
        assert (row.holder, row.epoch, row.expired) == (
            first.leadership.holder,
            first.leadership.epoch,
            False,
        )
        assert all(not c.events for c in candidates if c is not first)
    await admin.close()


async def test_a_resigning_leader_hands_over_before_its_lease_would_run_out(db: str) -> None:
    # A lease long enough that only the resignation explains a quick handover.
    lease = 60.0
    a, b = Candidate(db, lease), Candidate(db, lease)
    admin = await _admin(db)
    a.leadership.start()
    await _until(lambda: a.leadership.leading)
    async with running(b):
        before = await current(admin)
        assert before.holder == a.leadership.holder
        await a.leadership.stop()
        # The row says at once that nobody leads (a status, a fence, see it), unless the
        # follower has already taken over.
        resigned = await current(admin)
        assert resigned.expired or resigned.holder == b.leadership.holder
        await _until(lambda: b.leadership.leading)
        after = await current(admin)
        assert after.holder == b.leadership.holder
        assert after.epoch == before.epoch + 1
        assert before.expires_at is not None and after.since is not None
        assert after.since < before.expires_at  # the old lease had not run out
    assert a.events == [("elected", before.epoch)]  # a clean stop is no deposition
    await admin.close()


async def test_a_leader_whose_connection_dies_is_replaced_within_the_lease(db: str) -> None:
    a, b = Candidate(db), Candidate(db)
    admin = await _admin(db)
    async with running(a):
        await _until(lambda: a.leadership.leading)
        async with running(b):
            before = await current(admin)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (application_name(a.leadership.holder),),
            )
            await _until(lambda: b.leadership.leading)
            after = await current(admin)
            assert after.holder == b.leadership.holder and after.epoch > before.epoch
            assert before.expires_at is not None and after.since is not None
            assert after.since < before.expires_at
            await _until(lambda: "deposed" in [k for k, _ in a.events])
            assert not a.leadership.leading
    await admin.close()


async def test_a_stalled_holder_is_terminated_once_its_lease_expired(db: str) -> None:
    # A "stalled" leader: its session holds the lock, its row names it, and it renews nothing.
    stalled = f"stalled/{os.getpid()}/{secrets.token_hex(4)}"
    frozen = await psycopg.AsyncConnection.connect(
        db, autocommit=True, application_name=application_name(stalled)
    )
    await frozen.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK,))
    await frozen.execute(
        "UPDATE leadership SET epoch = 7, holder = %s, since = now(), "
        "expires_at = now() + interval '1 second' WHERE id = 1",
        (stalled,),
    )
    b = Candidate(db)
    with capture_logs() as logs:
        async with running(b):
            await _until(lambda: b.leadership.leading)
    assert b.epochs == [8]
    terminated = [e for e in logs if e["event"] == "leader.stalled_holder_terminated"]
    assert terminated and terminated[0]["holder"] == stalled and terminated[0]["epoch"] == 7
    assert terminated[0]["backends"] >= 1
    with pytest.raises(psycopg.OperationalError):
        await frozen.execute("SELECT 1")
    await frozen.close()


async def test_a_leader_whose_lease_ran_out_unnoticed_is_deposed_and_elected_again(
    db: str,
) -> None:
    """A leader paused past its lease with no successor (a single replica, a VM pause): its
    writer's fence refuses from then on, so its next renewal must not extend the lapsed lease
    but depose it, and a new election (a new epoch) lets it write again."""
    a = Candidate(db)
    async with running(a):
        await _until(lambda: a.leadership.leading)
        [first] = a.epochs
        conn = await _admin(db)
        try:
            await conn.execute("UPDATE leadership SET expires_at = now() - interval '1 second'")
        finally:
            await conn.close()
        await _until(lambda: len(a.epochs) == 2)
    assert [kind for kind, _ in a.events][:3] == ["elected", "deposed", "elected"]
    assert a.epochs[1] > first


async def test_its_own_stale_session_is_ended(db: str) -> None:
    """This process's lock connection died on its side while the server kept the session (a
    silent network): once the lease ran out, the process ends that session, and only that
    one, and leads again."""
    holder = f"self/{os.getpid()}/{secrets.token_hex(4)}"
    stale = await psycopg.AsyncConnection.connect(
        db, autocommit=True, application_name=application_name(holder)
    )
    live = await psycopg.AsyncConnection.connect(  # e.g. one of its own readers
        db, autocommit=True, application_name=application_name(holder)
    )
    await stale.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK,))
    await stale.execute(
        "UPDATE leadership SET epoch = 3, holder = %s, since = now(), "
        "expires_at = now() + interval '1 second' WHERE id = 1",
        (holder,),
    )
    b = Candidate(db, holder=holder)
    try:
        async with running(b):
            await _until(lambda: b.leadership.leading)
        assert b.epochs == [4]
        with pytest.raises(psycopg.OperationalError):
            await stale.execute("SELECT 1")
        await live.execute("SELECT 1")  # its other connections live on
    finally:
        await stale.close()
        await live.close()


async def test_a_live_holder_is_never_terminated(db: str) -> None:
    # Its lease runs (it renews): a follower waits, however long, and ends nothing.
    a, b = Candidate(db), Candidate(db)
    with capture_logs() as logs:
        async with running(a):
            await _until(lambda: a.leadership.leading)
            async with running(b):
                await asyncio.sleep(LEASE * 2)
                assert a.leadership.leading and not b.leadership.leading
    assert not [e for e in logs if e["event"] == "leader.stalled_holder_terminated"]


async def test_epochs_strictly_increase_across_takeovers(db: str) -> None:
    candidates = [Candidate(db) for _ in range(3)]
    admin = await _admin(db)
    seen: list[int] = []
    async with running(*candidates):
        for _ in range(5):
            await _until(lambda: len(_leaders(candidates)) == 1)
            leader = _leaders(candidates)[0]
            assert leader.leadership.epoch is not None
            seen.append(leader.leadership.epoch)
            # Depose it the hard way: its lock-holding session ends.
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (application_name(leader.leadership.holder),),
            )
            await _until(lambda gone=leader.leadership: not gone.leading)
    await admin.close()
    assert seen == sorted(set(seen)) and len(seen) == 5
    for c in candidates:
        assert c.epochs == sorted(set(c.epochs))


async def test_a_deposed_leader_is_told_at_its_next_renewal(db: str) -> None:
    # Someone else's takeover shows in the row only (the fence refuses the old leader's
    # commits from then on): the old leader must stop believing it leads.
    a = Candidate(db)
    admin = await _admin(db)
    with capture_logs() as logs:
        async with running(a):
            await _until(lambda: a.leadership.leading)
            await admin.execute(
                "UPDATE leadership SET epoch = epoch + 1, holder = 'someone/1/00' WHERE id = 1"
            )
            await _until(lambda: not a.leadership.leading)
            assert a.events[-1][0] == "deposed"
            assert "taken over" in a.events[-1][1]
    deposed = [e for e in logs if e["event"] == "leader.deposed"]
    assert deposed and deposed[0]["holder"] == a.leadership.holder
    await admin.close()


async def test_a_one_shot_writer_is_refused_while_a_daemon_leads(db: str) -> None:
    a = Candidate(db)
    async with running(a):
        await _until(lambda: a.leadership.leading)
        with pytest.raises(NotLeader, match=a.leadership.holder):
            async with held(db, lease=LEASE):
                pass
    # Once the daemon resigned, the one-shot writer leads, with the next epoch.
    async with held(db, lease=LEASE) as one_shot:
        assert one_shot.epoch == (a.epochs[-1] + 1)


class Cut:
    """A TCP forwarder to the database that a test can cut (every connection reset, new ones
    refused) and restore: a network partition between a replica and its database."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port or 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def test_an_unreachable_database_deposes_the_leader_and_is_waited_for(db: str) -> None:
    parts = urlsplit(db)
    cut = Cut(parts.port or 5432)
    await cut.open()
    via = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{cut.listen_port}"))
    a = Candidate(via)
    with capture_logs() as logs:
        async with running(a):
            await _until(lambda: a.leadership.leading)
            first = a.leadership.epoch
            await cut.cut()
            await _until(lambda: not a.leadership.leading)
            # Partitioned, it keeps trying and does not crash; once the database is back,
            # its old session has ended (the lock went with it) and it leads again.
            await asyncio.sleep(LEASE)
            await cut.open()
            await _until(lambda: a.leadership.leading)
            assert first is not None and (a.leadership.epoch or 0) > first
    kinds = [k for k, _ in a.events]
    assert kinds == ["elected", "deposed", "elected"]
    assert any(e["event"] == "leader.database_unreachable" for e in logs)


def test_the_holder_id_fits_whole_in_an_application_name() -> None:
    # PostgreSQL keeps 63 bytes: a cut name would hide the holder's backends from a successor.
    holder = holder_id()
    assert holder == holder_id()  # one per process: every connection carries the same name
    assert len(application_name(holder).encode()) <= 63
    assert holder.split("/")[1] == str(os.getpid())


async def test_a_leader_that_steps_down_resigns_and_competes_again(db: str) -> None:
    # What a replica does when it was elected but cannot write (its store failed to start).
    a = Candidate(db)
    async with running(a):
        await _until(lambda: a.leadership.leading)
        first = a.leadership.epoch
        a.leadership.step_down("could not start writing")
        await _until(lambda: len(a.epochs) == 2)
    assert [k for k, _ in a.events] == ["elected", "deposed", "elected"]
    assert a.events[1][1] == "stepped down: could not start writing"
    assert first is not None and a.epochs[1] > first


async def test_a_withdrawn_candidate_takes_over_no_more(db: str) -> None:
    # A stopping replica must not be elected while it shuts its writer down.
    a, b = Candidate(db), Candidate(db)
    async with running(a):
        await _until(lambda: a.leadership.leading)
        async with running(b):
            b.leadership.withdraw()
            await a.leadership.stop()
            await asyncio.sleep(b.leadership.try_every * 3)
            assert not b.leadership.leading and b.events == []
