"""The process under hostile conditions: failing commands, slow clients, a replaced database."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from sync.api import CACHE
from sync.app import create_app
from tests.cli_helpers import spawn, write_config
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
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sync",
            "--config",
            str(config),
            "export",
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
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
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sync",
            "--config",
            str(config),
            "status",
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
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
        assert str(port) in one_line(err, logs=True)


def other_mirror_like(tmp_path: Path, served_at: Path, mirror_db: Path) -> tuple[Path, str]:
    """Another mirror, with the size and mtime of the one served at `served_at`: its first
    server is gone. Returns the file and that server's name."""
    other = tmp_path / "other.db"
    shutil.copy(mirror_db, other)
    with sqlite3.connect(other) as db:
        [first] = db.execute("SELECT min(name) FROM served").fetchone()
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
                for _ in range(100):
                    if any(e["event"] == "store.replaced" for e in events):
                        break
                    await asyncio.sleep(0.1)
                assert await first_names(client) == before
                assert client.app is not None and client.app[CACHE].get("/x") is None
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
                for _ in range(100):
                    if any(e["event"] == "store.replaced" for e in events):
                        break
                    await asyncio.sleep(0.1)
                assert await first_names(client) == before
                assert client.app is not None and client.app[CACHE].get("/x") is None
            finally:
                await client.close()
        [replaced] = [e for e in events if e["event"] == "store.replaced"]
        assert replaced["action"] == "no database at the path"
