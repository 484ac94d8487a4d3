"""A real PostgreSQL for the tests: `$SUBREGISTRY_TEST_PG`, or a throwaway cluster per session.

The suite starts its own cluster rather than using a distribution's service: tests must neither
depend on nor disturb a server set up for something else, and a CI machine has none running.
Without psycopg installed, this module still imports, so every other test still runs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.cli_helpers import free_port

try:
    import psycopg
    from psycopg import errors, sql
except ImportError:
    HAVE_PSYCOPG = False
else:
    HAVE_PSYCOPG = True

EXTERNAL = "SUBREGISTRY_TEST_PG"  # DSN of a server the tests may create databases in
BINDIR = "SUBREGISTRY_TEST_PG_BINDIR"  # where initdb, pg_ctl and postgres are, if not found
SERVER_USER = "subregistry-test"  # the cluster's owner when the suite runs as root
SUPERUSER = "postgres"
TOOLS = ("initdb", "pg_ctl", "postgres")
START_ATTEMPTS = 3  # a free port can be taken between choosing it and the server binding it

# The cluster is thrown away with its directory: durability is not worth the disk flushes.
SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{socket}'
fsync = off
synchronous_commit = off
full_page_writes = off
"""
# Written whole so that trust never depends on initdb's defaults: the socket and loopback only.
HBA = "local all all trust\nhost all all 127.0.0.1/32 trust\n"

_numbers = itertools.count(1)


def unavailable(reason: str) -> NoReturn:
    """Skip where PostgreSQL is simply not installed, but fail in CI: `.ci/run` installs it
    there, so its absence is a broken pipeline, never a reason to pass without these tests."""
    if os.environ.get("CI", "").lower() in {"true", "1"}:
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@dataclass(frozen=True)
class PgServer:
    """A running server: `dsn` names its maintenance database; `data_dir` is None for a
    server the suite did not start (`$SUBREGISTRY_TEST_PG`)."""

    dsn: str
    data_dir: Path | None = None

    def database_dsn(self, name: str) -> str:
        return urlunsplit(urlsplit(self.dsn)._replace(path="/" + name))

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, empty database, dropped afterwards even if a connection to it was left
        open. Created from template0 with UTF-8 and the C locale, so that text compares by
        code point on every server, as SQLite's BINARY collation does."""
        with _admin(self.dsn) as admin:
            name = _create_database(admin)
        try:
            yield self.database_dsn(name)
        finally:
            with _admin(self.dsn) as admin:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                admin.execute(drop.format(sql.Identifier(name)))


def _admin(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    # CREATE and DROP DATABASE cannot run inside a transaction block.
    return psycopg.connect(dsn, autocommit=True, connect_timeout=30)


def _create_database(admin: psycopg.Connection[tuple[object, ...]]) -> str:
    create = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'")
    while True:
        # The process id keeps concurrent runs on one shared server apart.
        name = f"test_{os.getpid()}_{next(_numbers)}"
        try:
            admin.execute(create.format(sql.Identifier(name)))
        except errors.DuplicateDatabase:
            continue  # left behind on a shared server by a run that was killed
        return name


def find_bindir() -> Path | None:
    """`$SUBREGISTRY_TEST_PG_BINDIR`, else `pg_config --bindir`, else the newest Debian
    /usr/lib/postgresql/*/bin: the first that holds the server binaries."""
    named = os.environ.get(BINDIR)
    candidates = [Path(named)] if named else _installed_bindirs()
    return next((c for c in candidates if all((c / t).is_file() for t in TOOLS)), None)


def _installed_bindirs() -> list[Path]:
    found: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        # libpq's pg_config answers even where no server is installed: checked by the caller.
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            found.append(Path(out.stdout.strip()))

    def major(bindir: Path) -> int:
        return int(bindir.parent.name) if bindir.parent.name.isdigit() else 0

    return found + sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)


def _server_account() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root, so as root the cluster belongs to a system user
    (made once per machine); otherwise the suite's own user runs it."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(SERVER_USER)
        return entry.pw_uid, entry.pw_gid
    add = ["useradd", "--system", "--user-group", "--no-create-home"]
    add += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVER_USER]
    try:
        made = subprocess.run(add, capture_output=True, text=True, check=False)
        detail = made.stderr.strip()
    except OSError as e:
        detail = str(e)
    try:  # a concurrent session may have made it first (useradd then exits 9)
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.fail(f"cannot create the system user {SERVER_USER}: {detail}", pytrace=False)
    return entry.pw_uid, entry.pw_gid


def _as_server(
    account: tuple[int, int] | None, cwd: Path, *args: str | Path
) -> subprocess.CompletedProcess[str]:
    """Runs a PostgreSQL tool as the cluster's owner (like `runuser -u`, without a shell),
    with no PG* variable of the developer's steering it elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        user=None if account is None else account[0],
        group=None if account is None else account[1],
        extra_groups=None if account is None else [],
    )


@contextlib.contextmanager
def throwaway_cluster(bindir: Path) -> Iterator[PgServer]:
    """initdb into a new temporary directory, start on a free loopback port with the socket
    beside the data, and always stop and delete it, however the session ends. The directory
    is made with mkdtemp rather than under pytest's basetemp: that one is private to the
    suite's user, and the server's user must reach it."""
    account = _server_account()
    root = Path(tempfile.mkdtemp(prefix="subregistry-pg-"))
    data, socket, log = root / "data", root / "socket", root / "server.log"
    try:
        socket.mkdir()
        if account is not None:
            for path in (root, socket):
                os.chown(path, *account)
        made = _as_server(
            account, root, bindir / "initdb", "-D", data, "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        if made.returncode != 0:
            pytest.fail(f"initdb failed: {made.stderr.strip()}", pytrace=False)
        with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(SETTINGS.format(socket=socket))
        (data / "pg_hba.conf").write_text(HBA, encoding="utf-8")
        port = _start(account, root, bindir, data, log)
        watchdog = _watch(root, data)
        try:
            yield PgServer(f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres", data)
        finally:
            _stop(account, root, bindir, data)
            watchdog.kill()
            watchdog.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# A session killed outright (SIGTERM, SIGKILL, a CI job cancelled) runs no `finally`: a process
# of its own, outside the session's process group, notices its parent gone (it is re-parented)
# and ends the server at once (SIGQUIT: immediate shutdown), then removes its directory.
_WATCHDOG = """
import os, shutil, signal, sys, time
parent, pid_file, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
while os.getppid() == parent:
    time.sleep(0.5)
try:
    pid = int(open(pid_file).read().split()[0])
except (OSError, ValueError, IndexError):
    pid = None
if pid is not None:
    try:
        os.kill(pid, signal.SIGQUIT)
        for _ in range(600):
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
shutil.rmtree(root, ignore_errors=True)
"""


def _watch(root: Path, data: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(data / "postmaster.pid"), root],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _start(account: tuple[int, int] | None, root: Path, bindir: Path, data: Path, log: Path) -> int:
    for _ in range(START_ATTEMPTS):
        port = free_port()
        log.unlink(missing_ok=True)  # what it says is about this attempt only
        started = _as_server(
            account, root, bindir / "pg_ctl", "start", "-w", "-t", "120", "-D", data,
            "-l", log, "-o", f"-p {port}",
        )  # fmt: skip
        if started.returncode == 0:
            return port
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        if "already in use" not in text:
            break
    pytest.fail(f"PostgreSQL did not start: {started.stderr.strip()}\n{text}", pytrace=False)


def _stop(account: tuple[int, int] | None, root: Path, bindir: Path, data: Path) -> None:
    """Stopped means the postmaster has exited: pg_ctl returns once the pid file is gone,
    a moment before the process is."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    for mode in ("fast", "immediate"):  # immediate: a stuck backend must not outlive the run
        stop = (bindir / "pg_ctl", "stop", "-w", "-t", "60", "-D", data, "-m", mode)
        if _as_server(account, root, *stop).returncode == 0 or not pid_file.exists():
            break
    deadline = time.monotonic() + 60
    while running(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie has; it awaits only its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def _external(dsn: str) -> PgServer:
    if urlsplit(dsn).scheme not in {"postgresql", "postgres"}:
        pytest.fail(f"${EXTERNAL} must be a postgresql:// URL", pytrace=False)
    try:
        _admin(dsn).close()
    except psycopg.Error as e:
        pytest.fail(f"${EXTERNAL}: cannot connect: {e}", pytrace=False)
    return PgServer(dsn)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One server for the whole session: starting a cluster costs seconds, a database does
    not (see `pg_dsn`)."""
    if not HAVE_PSYCOPG:
        unavailable("psycopg is not installed (pip install -e '.[test]')")
    external = os.environ.get(EXTERNAL)
    if external:
        yield _external(external)
        return
    bindir = find_bindir()
    if bindir is None:
        unavailable(
            f"no PostgreSQL server binaries ({', '.join(TOOLS)}) in ${BINDIR}, "
            "`pg_config --bindir` or /usr/lib/postgresql/*/bin: install PostgreSQL "
            f"(Debian: apt-get install postgresql) or set ${EXTERNAL} to a server's DSN"
        )
    with throwaway_cluster(bindir) as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh empty database for this test alone (postgresql://…), dropped after it."""
    with pg_server.database() as dsn:
        yield dsn
