"""The process under hostile conditions: failing commands, slow clients, a replaced database."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from sync.app import create_app
from sync.serve.api import CACHE
from sync.serve.server import ACCEPT_LOG_INTERVAL, FD_RESERVE
from tests.cli_helpers import free_port, spawn, write_config
from tests.helpers import mirror_config

NO_UPSTREAM = "http://127.0.0.1:9"
HANG = 60.0  # seconds: a command still running after this is hung, not slow


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """The child's exit code and output; a child that does not exit is a failure, not a wait."""
    try:
        out, err = await asyncio.wait_for(process.communicate(), HANG)
    except TimeoutError:
        process.kill()
        await process.communicate()
        pytest.fail("the command hung")
    assert process.returncode is not None
    return process.returncode, (out or b"").decode(), (err or b"").decode()


def one_line(err: str, *, logs: bool = False) -> str:
    """A command failure is one `subregistry: …` line on stderr, and nothing else (but the
    JSON log events of a daemon, with `logs`)."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    if logs:
        lines = [line for line in lines if not (line.startswith("{") and json.loads(line))]
    assert len(lines) == 1, err
    assert lines[0].startswith("subregistry: "), err
    return lines[0]


def mirror_at(tmp_path: Path, mirror_db: Path | None) -> Path:
    """A config whose database is `tmp_path/mirror.db` (a copy of `mirror_db` when given)."""
    if mirror_db is not None:
        shutil.copy(mirror_db, tmp_path / "mirror.db")
    return write_config(tmp_path, NO_UPSTREAM)


# Every command that opens the store; `sync` and `reapply` open it for writing.
COMMANDS = [
    ("status",),
    ("explain", "ai.exa/exa"),
    ("export",),
    ("reapply",),
    ("sync",),
]


class TestOneLineFailures:
    async def test_export_to_a_missing_directory(self, tmp_path: Path, mirror_db: Path) -> None:
        """Used to print a traceback, then hang forever on the reader's thread."""
        config = mirror_at(tmp_path, mirror_db)
        target = tmp_path / "missing" / "dir" / "x.json"
        code, out, err = await finish(await spawn("--config", config, "export", "--output", target))
        assert code == 1 and out == ""
        line = one_line(err)
        assert str(target) in line and "No such file or directory" in line

    @pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
    async def test_export_to_a_full_disk(self, tmp_path: Path, mirror_db: Path) -> None:
        config = mirror_at(tmp_path, mirror_db)
        code, _, err = await finish(
            await spawn("--config", config, "export", "--output", "/dev/full")
        )
        assert code == 1
        assert "No space left on device" in one_line(err)

    @pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
    async def test_a_file_that_is_not_sqlite(self, tmp_path: Path, command: tuple[str]) -> None:
        config = mirror_at(tmp_path, None)
        (tmp_path / "mirror.db").write_bytes(b"this is not an SQLite database\n" * 200)
        code, _, err = await finish(await spawn("--config", config, *command))
        assert code == 1
        assert "file is not a database" in one_line(err)

    @pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
    async def test_a_directory_where_the_database_should_be(
        self, tmp_path: Path, command: tuple[str]
    ) -> None:
        """SQLite answers a directory with 'disk I/O error' (or cannot open it)."""
        config = mirror_at(tmp_path, None)
        (tmp_path / "mirror.db").mkdir()
        code, _, err = await finish(await spawn("--config", config, *command))
        assert code == 1
        assert "mirror.db" in one_line(err)

    @pytest.mark.parametrize("command", [c for c in COMMANDS if c[0] != "sync"], ids=str)
    async def test_a_database_that_vanished(self, tmp_path: Path, command: tuple[str]) -> None:
        """The read commands and `reapply` need a mirror; none exists at the path."""
        config = mirror_at(tmp_path, None)
        code, _, err = await finish(await spawn("--config", config, *command))
        assert code == 1
        line = one_line(err)
        assert "mirror.db" in line and "run a sync first" in line
        assert not (tmp_path / "mirror.db").exists()

    @pytest.mark.parametrize("command", [("status",), ("export",)], ids=lambda c: c[0])
    async def test_a_damaged_database(
        self, tmp_path: Path, mirror_db: Path, command: tuple[str]
    ) -> None:
        """Pages overwritten in the middle of the file: the commands that read every row meet
        SQLite's error mid-way, after the store opened cleanly."""
        config = mirror_at(tmp_path, mirror_db)
        path = tmp_path / "mirror.db"
        size = path.stat().st_size
        with path.open("r+b") as f:
            for offset in range(size // 8, size, size // 8):
                f.seek(offset)
                f.write(bytes(8192))
        code, _, err = await finish(await spawn("--config", config, *command))
        assert code == 1
        line = one_line(err)
        assert "malformed" in line or "not a database" in line, line

    async def test_export_into_a_closed_pipe(self, tmp_path: Path, mirror_db: Path) -> None:
        """`subregistry export | head -c 10`: quiet, as any Unix filter, with SIGPIPE's code."""
        config = mirror_at(tmp_path, mirror_db)
        read_end, write_end = os.pipe()
        process = await spawn(
            "--config", str(config), "export", stdout=write_end, stderr=asyncio.subprocess.PIPE
        )
        os.close(write_end)
        head = await asyncio.get_running_loop().run_in_executor(None, os.read, read_end, 10)
        os.close(read_end)
        code, _, err = await finish(process)
        assert head == b'{"servers"'
        assert (code, err) == (141, "")

    async def test_status_into_a_closed_pipe(self, tmp_path: Path, mirror_db: Path) -> None:
        """A short report fails at the final flush, which Python would report on its own."""
        config = mirror_at(tmp_path, mirror_db)
        read_end, write_end = os.pipe()
        os.close(read_end)
        process = await spawn(
            "--config", str(config), "status", stdout=write_end, stderr=asyncio.subprocess.PIPE
        )
        os.close(write_end)
        code, _, err = await finish(process)
        assert (code, err) == (141, "")

    async def test_explain_a_version_no_upstream_holds(
        self, tmp_path: Path, mirror_db: Path
    ) -> None:
        config = mirror_at(tmp_path, mirror_db)
        code, out, err = await finish(
            await spawn("--config", config, "explain", "ai.exa/exa", "9.9.9")
        )
        assert code == 1 and out == ""
        line = one_line(err)
        assert "ai.exa/exa" in line and "9.9.9" in line
        code, out, _ = await finish(
            await spawn("--config", config, "explain", "ai.exa/exa", "3.0.7")
        )
        assert code == 0 and "3.0.7" in out

    async def test_serve_on_a_port_in_use(self, tmp_path: Path, mirror_db: Path) -> None:
        config = mirror_at(tmp_path, mirror_db)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            config.write_text(config.read_text() + f"[api]\nport = {port}\n")
            code, _, err = await finish(await spawn("--config", config, "serve", "--no-sync"))
        assert code == 1
        line = one_line(err, logs=True)
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in line


def other_mirror_like(tmp_path: Path, served_at: Path, mirror_db: Path) -> tuple[Path, str]:
    """Another mirror, with the size and mtime of the one served at `served_at`: its first
    server is gone. Returns the file and that server's name."""
    other = tmp_path / "other.db"
    shutil.copy(mirror_db, other)
    with sqlite3.connect(other) as db:
        [first] = db.execute("SELECT min(name) FROM served").fetchone()
        # Deleting rows frees pages and keeps the size; the ranked-search index's upkeep
        # would write new ones (that other mirror's search is not what is tested here).
        db.execute("DROP TRIGGER served_rank_delete")
        db.execute("DELETE FROM served WHERE name = ?", (first,))
    db.close()
    stat = served_at.stat()
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (other.stat().st_size, other.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    return other, first


async def first_names(client: TestClient[Any, Any]) -> list[str]:
    response = await client.get("/v0.1/servers?limit=3")
    assert response.status == 200
    return [item["server"]["name"] for item in (await response.json())["servers"]]


async def until_changed(client: TestClient[Any, Any], before: list[str]) -> list[str]:
    """Poll (bounded) until the first page differs from `before`; the last page otherwise."""
    names = before
    for _ in range(100):
        names = await first_names(client)
        if names != before:
            break
        await asyncio.sleep(0.1)
    return names


def assert_caches_nothing(client: TestClient[Any, Any]) -> None:
    """The cache takes no response while the path holds another file (or none)."""
    assert client.app is not None
    cache = client.app[CACHE]
    cache.get("/probe")
    cache.put("/probe", b"{}")
    assert cache.get("/probe") is None


async def logged(events: list[dict[str, Any]], name: str, seconds: float = 10.0) -> None:
    """Until the captured log holds an event called `name` (or the time is up)."""
    for _ in range(int(seconds * 10)):
        if any(e["event"] == name for e in events):
            return
        await asyncio.sleep(0.1)


class TestAnotherDatabase:
    @pytest.mark.parametrize("how", ["os.replace", "delete then copy"])
    async def test_a_replica_serves_the_database_now_at_its_path(
        self, tmp_path: Path, mirror_db: Path, how: str
    ) -> None:
        """Same size, same mtime, another file: neither the cache nor the open readers may
        keep answering from the one that left."""
        path = tmp_path / "mirror.db"
        shutil.copy(mirror_db, path)
        client = TestClient(TestServer(create_app(mirror_config(path), sync=False)))
        await client.start_server()
        try:
            before = await first_names(client)
            assert await first_names(client) == before  # now served from the cache
            other, gone = other_mirror_like(tmp_path, path, mirror_db)
            assert before[0] == gone
            if how == "os.replace":
                os.replace(other, path)
            else:
                stat = other.stat()
                path.unlink()
                shutil.copy(other, path)
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            after = await until_changed(client, before)
            assert after == before[1:] + after[2:], after
            assert await first_names(client) == after
        finally:
            await client.close()

    async def test_a_syncing_daemon_keeps_its_file_and_says_so(
        self, tmp_path: Path, mirror_db: Path
    ) -> None:
        """The writer holds the old file (and the lock): the daemon does not switch under it,
        caches nothing from a file that is no longer at the path, and asks for a restart."""
        path = tmp_path / "mirror.db"
        shutil.copy(mirror_db, path)
        client = TestClient(TestServer(create_app(mirror_config(path), sync=True)))
        with structlog.testing.capture_logs() as events:
            await client.start_server()
            try:
                before = await first_names(client)
                other, _ = other_mirror_like(tmp_path, path, mirror_db)
                os.replace(other, path)
                await logged(events, "store.replaced")
                assert await first_names(client) == before
                assert_caches_nothing(client)
            finally:
                await client.close()
        [replaced] = [e for e in events if e["event"] == "store.replaced"]
        assert replaced["action"] == "restart to serve it" and replaced["path"] == str(path)

    async def test_a_deleted_database_is_served_from_the_open_file(
        self, tmp_path: Path, mirror_db: Path
    ) -> None:
        path = tmp_path / "mirror.db"
        shutil.copy(mirror_db, path)
        client = TestClient(TestServer(create_app(mirror_config(path), sync=False)))
        with structlog.testing.capture_logs() as events:
            await client.start_server()
            try:
                before = await first_names(client)
                path.unlink()
                await logged(events, "store.replaced")
                assert await first_names(client) == before
                assert_caches_nothing(client)
            finally:
                await client.close()
        [replaced] = [e for e in events if e["event"] == "store.replaced"]
        assert replaced["action"] == "no database at the path"


# --- slow and idle clients against a real `serve` process -------------------------------


@pytest.fixture
def many_fds() -> None:
    """This process opens thousands of sockets: its own soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4000:
        pytest.skip(f"the hard file-descriptor limit ({hard}) is too low for this case")
    if soft < 4000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Served:
    """A `serve --no-sync` child on a copy of the catalogue, its stderr collected as it comes."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.lines: list[str] = []
        assert process.stderr is not None
        self._drain = asyncio.create_task(self._collect(process.stderr))

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode())

    def events(self, name: str) -> list[dict[str, Any]]:
        logged = [json.loads(line) for line in self.lines if line.startswith("{")]
        return [e for e in logged if e.get("event") == name]

    async def get(self, path: str = "/v0.1/servers?limit=5") -> int:
        """One ordinary request on a fresh connection; a hang counts as a failure (0)."""
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
                ) as client,
                client.get(f"http://127.0.0.1:{self.port}{path}") as response,
            ):
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), HANG)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await self._drain
        return code


async def serve_mirror(
    tmp_path: Path, mirror_db: Path, api: str, *, fds: int | None = None
) -> Served:
    config = mirror_at(tmp_path, mirror_db)
    port = free_port()
    config.write_text(config.read_text() + f"[api]\nport = {port}\n{api}")

    def low_fd_limit() -> None:
        assert fds is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sync",
        "--config",
        str(config),
        "serve",
        "--no-sync",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=low_fd_limit if fds else None,
    )
    served = Served(process, port)
    for _ in range(200):
        if await served.get("/healthz") == 200:
            return served
        await asyncio.sleep(0.05)
    await served.stop()
    pytest.fail("serve did not start: " + "".join(served.lines)[-2000:])


class SlowClients:
    """Connections that never complete a request head: connect-only, a partial request line,
    and partial headers trickled one line every half second (slowloris)."""

    PARTIAL = (b"", b"GET /v0.1/servers HT", b"GET /v0.1/servers HTTP/1.1\r\nHost: x\r\n")

    def __init__(self, port: int) -> None:
        self.port = port
        self.writers: list[asyncio.StreamWriter] = []
        self.closed_by_server = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, count: int) -> int:
        """Open `count` connections; returns how many the server's side accepted at all."""
        gate = asyncio.Semaphore(300)

        async def connect(i: int) -> None:
            async with gate:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port), 3
                    )
                except (OSError, TimeoutError):
                    return
            self.writers.append(writer)
            partial = self.PARTIAL[i % 3]
            if partial:
                writer.write(partial)
            task = asyncio.create_task(self._until_closed(reader, writer, trickle=i % 3 == 2))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        await asyncio.gather(*(connect(i) for i in range(count)))
        return len(self.writers)

    async def _until_closed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, trickle: bool
    ) -> None:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.5)
            except TimeoutError:
                if trickle and not writer.is_closing():
                    writer.write(b"X-Slow: 1\r\n")
                continue
            except OSError:
                data = b""
            if not data:
                self.closed_by_server += 1
                return

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for writer in self.writers:
            writer.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.usefixtures("many_fds")
class TestSlowClients:
    async def test_1500_slow_clients_leave_ordinary_requests_answered(
        self, tmp_path: Path, mirror_db: Path
    ) -> None:
        """A daemon with the common 1,024-descriptor limit, 1,500 slowloris connections, and
        a header timeout long enough not to help: the connection bound and the eviction of the
        longest-waiting connection keep a way in for ordinary clients."""
        served = await serve_mirror(tmp_path, mirror_db, 'header_timeout = "5m"\n', fds=1024)
        slow = SlowClients(served.port)
        try:
            connected = await slow.open(1500)
            statuses = [await served.get() for _ in range(20)]
            # Each slow client notices the server's close on its next read (up to 0.5 s
            # later, longer on a loaded machine): wait for them to catch up before counting.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while connected - slow.closed_by_server > 1024 - FD_RESERVE:
                if loop.time() > deadline:
                    break
                await asyncio.sleep(0.1)
            still_open = connected - slow.closed_by_server
            descriptors = open_fds(served.process.pid)
        finally:
            slow.close()
            code = await served.stop()
        assert statuses == [200] * 20
        assert connected == 1500
        [lowered] = served.events("serve.max_connections_lowered")
        allowed = lowered["allowed"]
        assert allowed == 1024 - FD_RESERVE
        assert still_open <= allowed and descriptors < 1024
        assert code == 0
        [stopped] = served.events("serve.connections")
        assert stopped["evicted"] >= 1500 - allowed

    async def test_heads_that_never_complete_and_idle_keep_alives_are_closed(
        self, tmp_path: Path, mirror_db: Path
    ) -> None:
        """However they trickle, connections without a complete head within `header_timeout`
        are closed, as are keep-alive connections left idle; a client that keeps asking is
        answered on its one connection throughout."""
        served = await serve_mirror(tmp_path, mirror_db, "header_timeout = 2\n")
        slow = SlowClients(served.port)
        try:
            assert await slow.open(300) == 300
            idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", served.port)
            idle_writer.write(b"GET /v0.1/servers?limit=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await idle_reader.readuntil(b"\r\n\r\n")
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1),
                timeout=aiohttp.ClientTimeout(total=10),
            ) as client:
                url = f"http://127.0.0.1:{served.port}/v0.1/servers?limit=1"
                busy = []
                for _ in range(100):
                    async with client.get(url) as response:
                        await response.read()
                        busy.append(response.status)
                    if slow.closed_by_server == 300:
                        break
                    await asyncio.sleep(0.2)
            idle_closed = await asyncio.wait_for(idle_reader.read(), HANG)
        finally:
            slow.close()
            code = await served.stop()
        assert slow.closed_by_server == 300
        assert set(busy) == {200} and len(busy) >= 10  # > header_timeout of asking
        assert b"HTTP/1.1 200" not in idle_closed  # closed, not answered again
        assert code == 0
        [stopped] = served.events("serve.connections")
        assert stopped["timed_out"] >= 301

    async def test_failed_accepts_are_logged_once_per_interval_and_the_server_recovers(
        self, tmp_path: Path, mirror_db: Path
    ) -> None:
        """Descriptors run out under the daemon (its limit lowered below what it planned for):
        asyncio's accept fails and retries every second; the log gets one aggregated line per
        interval, not a traceback per attempt, and ordinary requests return once slow clients
        go."""
        served = await serve_mirror(tmp_path, mirror_db, "header_timeout = 3\n")
        pid = served.process.pid
        room = open_fds(pid) + 20
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (room, room))
        slow = SlowClients(served.port)
        started = asyncio.get_running_loop().time()
        try:
            await slow.open(400)
            await asyncio.sleep(5)  # keep the pressure on for several accept retries
        finally:
            slow.close()
        recovered = 0
        for _ in range(50):
            recovered = await served.get()
            if recovered == 200:
                break
            await asyncio.sleep(0.2)
        code = await served.stop()
        elapsed = asyncio.get_running_loop().time() - started
        assert recovered == 200
        assert code == 0
        stderr = "".join(served.lines)
        assert "Traceback" not in stderr and "out of system resource" not in stderr
        failures = served.events("http.accept_failed")
        attempts = sum(e["count"] for e in failures)
        assert failures and failures[0]["error"] == "EMFILE"
        assert len(failures) <= 2 + elapsed // ACCEPT_LOG_INTERVAL
        assert attempts > len(failures), failures
