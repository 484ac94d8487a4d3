"""The PostgreSQL the suite gets (tests/pg.py): a real server, a fresh database per test, the
advisory locks leadership will rely on, and a cluster that never outlives its session."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.cli_helpers import free_port
from tests.pg import BINDIR, EXTERNAL, SERVER_USER, PgServer, find_bindir, running, unavailable

try:
    import psycopg
except ImportError:
    unavailable("psycopg is not installed (pip install -e '.[test]')")

ROOT = Path(__file__).parent.parent
KEY = 1_207_012  # any bigint: advisory lock keys are the application's own namespace


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def scalar(conn: psycopg.AsyncConnection[Any], query: str, *args: object) -> Any:
    row = await (await conn.execute(query, args)).fetchone()
    assert row is not None
    return row[0]


async def test_a_commit_on_one_connection_is_read_on_another(pg_dsn: str) -> None:
    writer = await psycopg.AsyncConnection.connect(pg_dsn)  # a transaction until commit
    async with writer, await connect(pg_dsn) as reader:
        await writer.execute("CREATE TABLE entries (name text, version text)")
        await writer.execute("INSERT INTO entries VALUES (%s, %s)", ("io.github.a/b", "1.0.0"))
        tables = "SELECT count(*) FROM pg_tables WHERE tablename = 'entries'"
        assert await scalar(reader, tables) == 0
        await writer.commit()
        rows = await (await reader.execute("SELECT name, version FROM entries")).fetchall()
        assert rows == [("io.github.a/b", "1.0.0")]


async def test_each_test_gets_a_fresh_empty_utf8_database(pg_dsn: str) -> None:
    async with await connect(pg_dsn) as conn:
        assert await scalar(conn, "SELECT current_database()") == urlsplit(pg_dsn).path[1:]
        user_tables = (
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%%'"
        )
        assert await scalar(conn, user_tables) == 0
        assert await scalar(conn, "SHOW server_encoding") == "UTF8"
        # Byte order, as SQLite's BINARY collation sorts: 'B' < 'a' < 'é'.
        ordered = "SELECT array_agg(x ORDER BY x) FROM unnest(ARRAY['é', 'a', 'B']) x"
        assert await scalar(conn, ordered) == ["B", "a", "é"]


async def test_two_databases_are_isolated_and_dropped(pg_server: PgServer, pg_dsn: str) -> None:
    async with await connect(pg_dsn) as mine:
        with pg_server.database() as other_dsn:
            assert other_dsn != pg_dsn
            other = await connect(other_dsn)
            await mine.execute("CREATE TABLE t (x int)")
            await mine.execute("INSERT INTO t VALUES (1)")
            assert await scalar(other, "SELECT to_regclass('t') IS NULL") is True
            await other.execute("CREATE TABLE t (x int)")
            assert await scalar(other, "SELECT count(*) FROM t") == 0
            # Advisory keys are per database: tests in their own databases never block.
            assert await scalar(mine, "SELECT pg_try_advisory_lock(%s)", KEY) is True
            assert await scalar(other, "SELECT pg_try_advisory_lock(%s)", KEY) is True
            # `other` stays open: the drop must close it rather than fail or wait.
        named = "SELECT count(*) FROM pg_database WHERE datname = %s"
        assert await scalar(mine, named, urlsplit(other_dsn).path[1:]) == 0
        assert await scalar(mine, "SELECT count(*) FROM t") == 1
        with pytest.raises(psycopg.OperationalError):
            await other.execute("SELECT 1")
        await other.close()


async def test_an_advisory_lock_blocks_others_until_its_holder_disconnects(pg_dsn: str) -> None:
    holder, contender = await connect(pg_dsn), await connect(pg_dsn)
    async with contender:
        await holder.execute("SELECT pg_advisory_lock(%s)", (KEY,))
        assert await scalar(contender, "SELECT pg_try_advisory_lock(%s)", KEY) is False
        await holder.close()
        await assert_takes_the_lock(contender)


async def test_an_advisory_lock_is_freed_when_its_holder_is_killed(pg_dsn: str) -> None:
    """The leader's failure the issue cares about: a process gone without a goodbye."""
    script = (
        "import sys, psycopg\n"
        "conn = psycopg.connect(sys.argv[1], autocommit=True)\n"
        "conn.execute('SELECT pg_advisory_lock(%s)', (int(sys.argv[2]),))\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, pg_dsn, str(KEY),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"locked\n"
        async with await connect(pg_dsn) as contender:
            assert await scalar(contender, "SELECT pg_try_advisory_lock(%s)", KEY) is False
            holder.send_signal(signal.SIGKILL)
            await holder.wait()
            await assert_takes_the_lock(contender)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def assert_takes_the_lock(contender: psycopg.AsyncConnection[Any]) -> None:
    # The server ends a closed session asynchronously: wait for the lock, not for a delay.
    await contender.execute("SET lock_timeout = '60s'")
    await contender.execute("SELECT pg_advisory_lock(%s)", (KEY,))
    held = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND pid = pg_backend_pid()"
    )
    assert await scalar(contender, held) == 1


async def test_the_server_runs_as_a_non_root_user(pg_server: PgServer, pg_dsn: str) -> None:
    if pg_server.data_dir is None:
        pytest.skip(f"${EXTERNAL} names a server whose files are not the suite's to inspect")
    expected = pwd.getpwnam(SERVER_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
    async with await connect(pg_dsn) as conn:
        data_dir = Path(await scalar(conn, "SHOW data_directory"))
        # The process serving this very connection, as the kernel sees it (real, effective
        # uid), read while the connection keeps it alive.
        backend = await scalar(conn, "SELECT pg_backend_pid()")
        status = Path(f"/proc/{backend}/status").read_text().splitlines()
    assert data_dir == pg_server.data_dir
    assert data_dir.stat().st_uid == expected != 0
    uids = next(line.split()[1:3] for line in status if line.startswith("Uid:"))
    assert uids == [str(expected)] * 2


def test_a_database_dsn_keeps_the_servers_credentials_and_options() -> None:
    server = PgServer("postgresql://ci:secret@db.internal:6432/postgres?sslmode=require")
    named = server.database_dsn("test_1_2")
    assert named == "postgresql://ci:secret@db.internal:6432/test_1_2?sslmode=require"


# A session of its own, in a real pytest process, for what only a session's end shows.


def session(tmp_path: Path, source: str) -> list[str]:
    """A test module using the fixtures, and the command that runs it on its own."""
    (tmp_path / "conftest.py").write_text(
        "from tests.pg import pg_dsn, pg_server\n__all__ = ['pg_dsn', 'pg_server']\n"
    )
    (tmp_path / "test_inner.py").write_text(source)
    return [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "test_inner.py"]


def run_session(tmp_path: Path, source: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        session(tmp_path, source),
        cwd=tmp_path,
        env=session_env(tmp_path, env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def session_env(tmp_path: Path, changes: dict[str, str | None]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {EXTERNAL, BINDIR, "CI"}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["REPORT"] = str(tmp_path / "report.jsonl")
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


REPORT = """
import json, os

def report(**facts):
    with open(os.environ["REPORT"], "a") as f:
        f.write(json.dumps(facts) + "\\n")
"""


def reports(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "report.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("ci", "outcome", "code"), [(None, "1 skipped", 0), ("true", "1 error", 1)]
)
def test_without_postgresql_tests_skip_except_in_ci(
    tmp_path: Path, ci: str | None, outcome: str, code: int
) -> None:
    nothing = tmp_path / "empty-bin"
    nothing.mkdir()
    done = run_session(
        tmp_path, "def test_it(pg_dsn):\n    pass\n", SUBREGISTRY_TEST_PG_BINDIR=str(nothing), CI=ci
    )
    assert done.returncode == code and f"\n{outcome} in " in done.stdout, done.stdout
    assert f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) in ${BINDIR}" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("ending", ["failed", "interrupted", "terminated", "killed"])
def test_the_cluster_is_stopped_and_removed_however_the_session_ends(
    tmp_path: Path, ending: str
) -> None:
    if find_bindir() is None:
        unavailable("no PostgreSQL server binaries to start a cluster with")
    source = REPORT + (
        "def test_it(pg_server, pg_dsn):\n"
        "    pid = int((pg_server.data_dir / 'postmaster.pid').read_text().split()[0])\n"
        "    report(data_dir=str(pg_server.data_dir), dsn=pg_server.dsn, pid=pid)\n"
    )
    source += (
        "    raise AssertionError('this test fails on purpose')\n"
        if ending == "failed"
        else "    __import__('time').sleep(600)\n"
    )
    if ending == "failed":
        done = run_session(tmp_path, source)
        assert done.returncode == 1 and "1 failed" in done.stdout
    else:
        interrupt_session(tmp_path, source, ending)
    (facts,) = reports(tmp_path)
    # A session killed outright runs no teardown: its watchdog stops the server meanwhile.
    deadline = time.monotonic() + 60
    while (running(facts["pid"]) or Path(facts["data_dir"]).parent.exists()) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not Path(facts["data_dir"]).parent.exists()
    assert not running(facts["pid"])
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(facts["dsn"], connect_timeout=10).close()


def interrupt_session(tmp_path: Path, source: str, ending: str) -> None:
    """Ctrl-C in the middle of a test (pytest tears the session down, and the cluster with
    it), or SIGTERM / SIGKILL (no teardown at all)."""
    inner = subprocess.Popen(
        session(tmp_path, source),
        cwd=tmp_path, env=session_env(tmp_path, {}),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        report = tmp_path / "report.jsonl"
        while not report.exists() or not report.read_text().endswith("\n"):
            assert inner.poll() is None, "the session ended before its test ran"
            time.sleep(0.05)
        sent = {"interrupted": signal.SIGINT, "terminated": signal.SIGTERM}.get(
            ending, signal.SIGKILL
        )
        inner.send_signal(sent)
        code = inner.wait(timeout=300)
        assert code == (2 if sent == signal.SIGINT else -sent)  # 2: pytest's "interrupted"
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()


def test_an_external_server_gets_databases_that_are_dropped_after_each_test(
    tmp_path: Path, pg_server: PgServer
) -> None:
    nothing = tmp_path / "empty-bin"
    nothing.mkdir()
    source = REPORT + (
        "import psycopg\n"
        "leaked = []\n"
        "def test_uses_it(pg_server, pg_dsn):\n"
        "    assert pg_server.data_dir is None\n"
        "    with psycopg.connect(pg_dsn) as conn:\n"
        "        conn.execute('CREATE TABLE t (x int)')\n"
        "    report(dsn=pg_dsn)\n"
        "def test_fails_with_a_connection_left_open(pg_dsn):\n"
        "    leaked.append(psycopg.connect(pg_dsn))\n"
        "    report(dsn=pg_dsn)\n"
        "    raise AssertionError('this test fails on purpose')\n"
    )
    # No binaries: a cluster of its own could not start, so the server used is the one named.
    done = run_session(
        tmp_path, source, SUBREGISTRY_TEST_PG=pg_server.dsn, SUBREGISTRY_TEST_PG_BINDIR=str(nothing)
    )
    assert done.returncode == 1 and "1 failed, 1 passed" in done.stdout, done.stdout
    dsns = [urlsplit(facts["dsn"]) for facts in reports(tmp_path)]
    assert {dsn.netloc for dsn in dsns} == {urlsplit(pg_server.dsn).netloc}
    names = [dsn.path[1:] for dsn in dsns]
    assert len(set(names)) == 2
    with psycopg.connect(pg_server.dsn) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,))
        assert left.fetchall() == []


def test_an_unreachable_external_server_is_an_error_not_a_skip(tmp_path: Path) -> None:
    dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    done = run_session(tmp_path, "def test_it(pg_dsn):\n    pass\n", SUBREGISTRY_TEST_PG=dsn)
    assert done.returncode == 1 and "1 error" in done.stdout
    assert f"${EXTERNAL}: cannot connect" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
