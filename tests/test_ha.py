"""Replicas of one PostgreSQL store, as real `subregistry serve` processes: a killed leader is
replaced and its pass resumed from the last committed page, a stalled one is fenced off and
commits nothing once it wakes, replicas upgrading together migrate once, the API of a follower
never fails meanwhile, and its cached responses follow the leader's commits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.pg import HAVE_PSYCOPG, unavailable

if not HAVE_PSYCOPG:
    unavailable("psycopg is not installed (pip install -e '.[test]')")

import psycopg

from sync.app import create_app
from sync.config import StorageConfig
from sync.serve.cache import ResponseCache, SerialState
from sync.store import open_reader
from sync.store.postgres.schema import MIGRATIONS, migrate
from tests.cli_helpers import free_port, spawn
from tests.fake_upstream import FakeRegistry
from tests.helpers import assert_mirrors, mirror_config, served, serving

LEASE = 2.0
PATIENCE = 60.0  # a wait this long means the property failed; it holds far sooner
SERVERS = 400  # of the catalogue: 40 pages of 10, slow enough to kill a pass in the middle
PAGE_DELAY = 0.15


class Replica:
    """A `subregistry serve` process and its parsed JSON log."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def logged(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)


def _config(tmp_path: Path, dsn: str, upstream: str, port: int, interval: float) -> Path:
    path = tmp_path / f"replica-{port}.toml"
    path.write_text(
        f'[storage]\npath = "{tmp_path / "unused.db"}"\nurl = "{dsn}"\nlease = {LEASE}\n'
        f"refresh = 0.5\n[api]\nport = {port}\nstop_grace = 5\n"
        f'[logging]\nformat = "json"\n'
        f'[[upstreams]]\nname = "official"\nurl = "{upstream}"\npage_delay = 0\n'
        f"page_size = 10\nretries = 1\ninterval = {interval}\n"
    )
    return path


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path, dsn: str, upstream: str, count: int, *args: str, interval: float = 3600
) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(count):
            port = free_port()
            config = _config(tmp_path, dsn, upstream, port, interval)
            process = await spawn("--config", config, "serve", *args)
            started.append(Replica(process, port))
        for replica in started:
            await _until(lambda r=replica: _answers(r))
        yield started
    finally:
        for replica in started:
            await replica.stop()


async def _answers(replica: Replica) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(replica.url + "/healthz") as response,
        ):
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _until(check: Callable[[], Awaitable[bool]], patience: float = PATIENCE) -> None:
    async with asyncio.timeout(patience):
        while not await check():
            await asyncio.sleep(0.1)


async def _db(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def _one(conn: psycopg.AsyncConnection[Any], query: str, *params: Any) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    return None if row is None else (row[0] if len(row) == 1 else row)


async def _leader_pid(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """The pid in the holder of a running lease (`host/pid/hex`), if any."""
    holder = await _one(conn, "SELECT holder FROM leadership WHERE id = 1 AND expires_at > now()")
    return int(holder.split("/")[-2]) if holder else None


async def _running_pass(conn: psycopg.AsyncConnection[Any], pages: int) -> int | None:
    """The id of a running pass that has committed at least `pages` pages."""
    return await _one(  # type: ignore[no-any-return]
        conn, "SELECT id FROM passes WHERE outcome = 'running' AND pages >= %s", pages
    )


@pytest.fixture
def slow_fake(catalogue: list[dict[str, Any]]) -> FakeRegistry:
    names = sorted({item["server"]["name"] for item in catalogue})[: SERVERS // 2]
    chosen = [item for item in catalogue if item["server"]["name"] in set(names)]
    fake = FakeRegistry(json.loads(json.dumps(chosen)))
    fake.page_delay = PAGE_DELAY
    return fake


class Poller:
    """Requests against one replica, all the time, recording every status (or error)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int | str] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        paths = ("/v0.1/servers?limit=5", "/readyz", "/v0.1/servers?search=a&limit=3")
        async with aiohttp.ClientSession() as session:
            while True:
                for path in paths:
                    try:
                        async with session.get(self.url + path) as response:
                            await response.read()
                            self.statuses.append(response.status)
                    except aiohttp.ClientError as exc:
                        self.statuses.append(type(exc).__name__)
                await asyncio.sleep(0.05)

    async def stop(self) -> list[int | str]:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.statuses


async def _assert_stamps_follow_commit_order(conn: psycopg.AsyncConnection[Any]) -> None:
    """One writer at a time, so transaction ids order the commits: every transaction's
    `updatedAt` stamps come after those of every transaction committed before it, whichever
    leader wrote them."""
    cursor = await conn.execute(
        "SELECT xmin::text::bigint AS tx, min(updated_at), max(updated_at) "
        "FROM served GROUP BY tx ORDER BY tx"
    )
    rows = await cursor.fetchall()
    assert len(rows) > 1
    for before, after in itertools.pairwise(rows):
        assert before[2] < after[1], (before, after)


async def _served(dsn: str) -> dict[tuple[str, str], dict[str, Any]]:
    reader = await open_reader(StorageConfig(url=dsn))
    try:
        return await served(reader)
    finally:
        await reader.close()


async def test_a_killed_leader_is_replaced_and_its_pass_resumed(
    tmp_path: Path, pg_dsn: str, slow_fake: FakeRegistry
) -> None:
    db = await _db(pg_dsn)
    async with serving(slow_fake.app()) as upstream, replicas(tmp_path, pg_dsn, upstream, 2) as rs:
        await _until(lambda: _leader_pid(db))
        interrupted = None

        async def mid_pass() -> bool:
            nonlocal interrupted
            interrupted = await _running_pass(db, 3)
            return interrupted is not None

        await _until(mid_pass)
        leader_pid = await _leader_pid(db)
        leader = next(r for r in rs if r.pid == leader_pid)
        survivor = next(r for r in rs if r is not leader)
        epoch = await _one(db, "SELECT epoch FROM leadership")
        poller = Poller(survivor.url)
        await asyncio.sleep(0.5)
        leader.process.send_signal(signal.SIGKILL)
        await leader.process.wait()

        await _until(lambda: _is_leader(db, survivor))
        assert await _one(db, "SELECT epoch FROM leadership") > epoch

        async def resumed_and_done() -> bool:
            row = await _one(db, "SELECT outcome FROM passes WHERE resumed_from = %s", interrupted)
            return row == "ok"

        await _until(resumed_and_done)
        statuses = await poller.stop()
        # The resumed pass took up where the killed one's last commit left off: between them
        # they inserted every version once.
        before = await _one(db, "SELECT outcome, inserted FROM passes WHERE id = %s", interrupted)
        after = await _one(db, "SELECT inserted FROM passes WHERE resumed_from = %s", interrupted)
        assert before[0] == "interrupted" and before[1] > 0
        assert before[1] + after == len(slow_fake.rows)
        assert statuses and all(isinstance(s, int) and s < 500 for s in statuses), statuses
        assert survivor.logged("leader.elected")
        await _assert_stamps_follow_commit_order(db)
    assert_mirrors(await _served(pg_dsn), slow_fake)
    await db.close()


async def _is_leader(conn: psycopg.AsyncConnection[Any], replica: Replica) -> bool:
    return await _leader_pid(conn) == replica.pid


async def test_a_stalled_leader_is_fenced_off_and_commits_nothing_once_it_wakes(
    tmp_path: Path, pg_dsn: str, slow_fake: FakeRegistry
) -> None:
    db = await _db(pg_dsn)
    async with serving(slow_fake.app()) as upstream, replicas(tmp_path, pg_dsn, upstream, 2) as rs:
        await _until(lambda: _leader_pid(db))
        await _until(lambda: _running_pass(db, 2))
        pid = await _leader_pid(db)
        stalled = next(r for r in rs if r.pid == pid)
        survivor = next(r for r in rs if r is not stalled)
        stalled_epoch = await _one(db, "SELECT epoch FROM leadership")
        stalled.process.send_signal(signal.SIGSTOP)
        poller = Poller(survivor.url)

        await _until(lambda: _is_leader(db, survivor))
        # The survivor closed the stalled leader's pass; what it reads now must not change.
        await _until(lambda: _any(survivor.logged("leader.writing")))
        passes = await (await db.execute("SELECT * FROM passes ORDER BY id")).fetchall()
        old_pass = [p for p in passes if p[5] == "interrupted"]
        assert old_pass, passes
        assert survivor.logged("leader.stalled_holder_terminated")[0]["epoch"] == stalled_epoch

        stalled.process.send_signal(signal.SIGCONT)
        await _until(lambda: _any(stalled.logged("leader.deposed")))
        await _until(lambda: _one(db, "SELECT count(*) FROM passes WHERE outcome = 'ok'"), PATIENCE)
        statuses = await poller.stop()
        after = await (await db.execute("SELECT * FROM passes ORDER BY id")).fetchall()
        # The stalled leader's pass row is as the survivor left it, and every pass row since
        # is the survivor's (a new pass by the woken leader would be another row, running or
        # ended, beside the survivor's one resumed pass).
        assert [p for p in after if p[0] == old_pass[0][0]] == old_pass[:1]
        newer = [p for p in after if p[0] > old_pass[0][0]]
        assert len(newer) == 1 and newer[0][14] == old_pass[0][0], after
        assert not stalled.logged("leader.elected")[1:]
        assert all(isinstance(s, int) and s < 500 for s in statuses), statuses
        await _assert_stamps_follow_commit_order(db)
    assert_mirrors(await _served(pg_dsn), slow_fake)
    await db.close()


async def _any(items: list[Any]) -> bool:
    return bool(items)


async def test_replicas_upgrading_together_migrate_once_and_both_serve(
    tmp_path: Path, pg_dsn: str, fake_url: str
) -> None:
    db = await _db(pg_dsn)
    async with replicas(tmp_path, pg_dsn, fake_url, 2) as rs:
        applied = await (await db.execute("SELECT name FROM subregistry_migrations")).fetchall()
        assert sorted(r[0] for r in applied) == [name for name, _ in MIGRATIONS]
        await _until(lambda: _leader_pid(db))
        async with aiohttp.ClientSession() as session:
            for replica in rs:
                async with session.get(replica.url + "/readyz") as response:
                    assert response.status == 200
                async with session.get(replica.url + "/v0.1/servers?limit=1") as response:
                    assert response.status == 200
        assert sum(len(r.logged("leader.elected")) for r in rs) == 1
    await db.close()


async def _metric(replica: Replica, name: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(replica.url + "/metrics") as response,
    ):
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_the_leader_gauge_and_the_status_name_the_writer(
    tmp_path: Path, pg_dsn: str, fake_url: str
) -> None:
    db = await _db(pg_dsn)
    async with replicas(tmp_path, pg_dsn, fake_url, 2) as rs:
        await _until(lambda: _leader_pid(db))
        pid = await _leader_pid(db)
        leader = next(r for r in rs if r.pid == pid)
        follower = next(r for r in rs if r is not leader)
        await _until(lambda: _gauge_is(leader, 1.0))
        assert await _metric(follower, "subregistry_leader") == 0.0
        config = tmp_path / f"replica-{follower.port}.toml"
        process = await spawn("--config", config, "status", "--json")
        out, err = await process.communicate()
        assert process.returncode == 0, err
        report = json.loads(out)["leader"]
        row = await _one(db, "SELECT epoch, holder FROM leadership")
        assert (report["epoch"], report["holder"], report["leading"]) == (*row, True)
        assert report["since"]
        process = await spawn("--config", config, "status")
        out, _ = await process.communicate()
        assert f"leader:          {row[1]} (epoch {row[0]}, since" in out.decode()
    await db.close()


async def _gauge_is(replica: Replica, value: float) -> bool:
    return await _metric(replica, "subregistry_leader") == value


async def test_a_follower_is_ready_without_a_leader(
    tmp_path: Path, pg_dsn: str, fake_url: str
) -> None:
    """`serve --no-sync` never leads, and its /readyz does not depend on anyone leading."""
    db = await _db(pg_dsn)
    await migrate(db)
    async with replicas(tmp_path, pg_dsn, fake_url, 1, "--no-sync") as (follower,):
        async with aiohttp.ClientSession() as session:
            async with session.get(follower.url + "/readyz") as response:
                assert response.status == 200
            await asyncio.sleep(LEASE)
        assert await _one(db, "SELECT epoch FROM leadership") == 0
        assert await _metric(follower, "subregistry_leader") == 0.0
    await db.close()


async def test_a_newer_schema_is_served_but_never_led(
    tmp_path: Path, pg_dsn: str, fake_url: str
) -> None:
    db = await _db(pg_dsn)
    await migrate(db)
    await db.execute("INSERT INTO subregistry_migrations (name) VALUES ('9999_from_the_future')")
    async with replicas(tmp_path, pg_dsn, fake_url, 1) as (replica,):
        await _until(lambda: _any(replica.logged("leader.refused")))
        assert replica.logged("leader.refused")[0]["reason"] == "schema newer than this code"
        async with aiohttp.ClientSession() as session:
            async with session.get(replica.url + "/readyz") as response:
                assert response.status == 200
            async with session.get(replica.url + "/v0.1/servers") as response:
                assert response.status == 200
        await asyncio.sleep(LEASE)
        assert await _one(db, "SELECT epoch FROM leadership") == 0
    await db.close()


async def test_a_followers_cache_follows_the_leaders_commits(
    tmp_path: Path, pg_dsn: str, fake: FakeRegistry
) -> None:
    db = await _db(pg_dsn)
    await migrate(db)
    fake.rows = dict(sorted(fake.rows.items())[:200])
    name, version = next(iter(fake.rows))
    path = f"/v0.1/servers/{name.replace('/', '%2F')}/versions/{version}"
    ok = "SELECT count(*) FROM passes WHERE outcome = 'ok'"
    async with (
        serving(fake.app()) as upstream,
        replicas(tmp_path, pg_dsn, upstream, 1, "--no-sync") as (follower,),
        aiohttp.ClientSession() as session,
    ):

        async def description() -> str:
            async with session.get(follower.url + path) as response:
                assert response.status < 500
                body = await response.json()
                return str(body["server"]["description"]) if response.status == 200 else ""

        async with replicas(tmp_path, pg_dsn, upstream, 1):
            await _until(lambda: _one(db, ok))
        first = await description()
        assert first and await description() == first  # from the cache, the second time
        fake.edit(name, version, description="changed upstream")
        # A leader elected now passes at once (upstream intervals are an hour at least).
        async with replicas(tmp_path, pg_dsn, upstream, 1):
            await _until(lambda: _one(db, ok + " AND mode = 'incremental'"))
            await _until(lambda: _description_is(description, "changed upstream"))
    await db.close()


async def _description_is(read: Callable[[], Awaitable[str]], wanted: str) -> bool:
    return await read() == wanted


def _miss_then_fill(cache: ResponseCache, key: str, body: bytes) -> None:
    """What the middleware does: look up under the state now, file the body under it."""
    state = cache.state()
    assert state is not None and cache.get(key, state) is None
    cache.put(key, body, state)


def test_a_serial_state_is_unknown_until_read_and_once_a_check_is_late() -> None:
    now = [100.0]
    state = SerialState(1.0, clock=lambda: now[0])
    assert state() is None

    async def read() -> int:
        return 7

    asyncio.run(state.check(read))
    assert state() == (7,)
    now[0] += 1.4
    assert state() == (7,)
    now[0] += 0.2  # the last check started more than 1.5 x refresh ago
    assert state() is None


async def test_a_poller_cancelled_as_its_read_completes_stops() -> None:
    """The cancellation that stops a replica's poller may land just as a read finishes: it
    must stop the poller all the same (on Python 3.11 `wait_for` swallowed it there, and the
    app's shutdown waited for ever)."""
    state = SerialState(0.05)
    poller: asyncio.Task[None] | None = None

    async def read() -> int:
        assert poller is not None
        poller.cancel()
        return 1

    poller = asyncio.create_task(state.poll(read))
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await poller


def test_a_failing_check_makes_the_serial_unknown_and_caches_nothing() -> None:
    state = SerialState(1.0)

    async def ok() -> int:
        return 1

    async def failing() -> int:
        raise psycopg.OperationalError("server closed the connection")

    asyncio.run(state.check(ok))
    cache = ResponseCache(None, 10_000, source=state)
    _miss_then_fill(cache, "/a", b"body")
    assert cache.get("/a") is not None
    asyncio.run(state.check(failing))
    assert cache.state() is None  # the middleware then neither reads nor files anything
    asyncio.run(state.check(ok))
    assert cache.get("/a") is not None  # the same serial again: still the same content


def test_a_new_serial_empties_the_cache() -> None:
    state = SerialState(1.0)
    serial = [1]

    async def read() -> int:
        return serial[0]

    asyncio.run(state.check(read))
    cache = ResponseCache(None, 10_000, source=state)
    _miss_then_fill(cache, "/a", b"old")
    assert cache.get("/a") is not None
    serial[0] = 2
    asyncio.run(state.check(read))
    assert cache.get("/a") is None


async def _gauge_of(url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("subregistry_leader "):
                return float(line.split()[1])
    raise AssertionError("no subregistry_leader in /metrics")


async def test_on_sqlite_the_syncing_daemon_is_the_leader(tmp_path: Path, fake_url: str) -> None:
    config = mirror_config(tmp_path / "mirror.db", fake_url)
    async with serving(create_app(config, sync=True)) as writer:
        assert await _gauge_of(writer) == 1.0
        async with serving(create_app(config, sync=False)) as replica:
            assert await _gauge_of(replica) == 0.0
