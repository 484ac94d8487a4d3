"""Failover time: from SIGKILL of the leader to the first page committed by its successor.

Two `subregistry serve` replicas share one PostgreSQL database (a fresh one per run) and mirror
a slow paged fake registry (the tests' fake, over the test catalogue); once the leader's pass
has committed a few pages it is killed, and the database is polled (every 10 ms) for the
successor's takeover and for the first page of its resumed pass. Target: < 10 s.

With --signal STOP the leader stalls instead (its session, and lock, live on): the successor
takes over once the lease ran out and it has terminated the stalled backends.
Usage: python bench/failover.py [--runs 5] [--lease 10] [--signal KILL|STOP] [--dsn …]
Without --dsn a throwaway cluster is started (PostgreSQL server binaries needed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from tests.fake_upstream import FakeRegistry  # noqa: E402
from tests.pg import PgServer, find_bindir, throwaway_cluster  # noqa: E402

TARGET = 10.0
PAGE_DELAY = 0.1  # per page at the fake: a pass of the test catalogue lasts ~30 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[PgServer]:
    if dsn:
        yield PgServer(dsn)
        return
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries: install PostgreSQL or pass --dsn")
    with throwaway_cluster(bindir) as started:
        yield started


async def one(conn: psycopg.AsyncConnection[Any], query: str, *params: Any) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    return None if row is None else (row[0] if len(row) == 1 else row)


async def leader_pid(conn: psycopg.AsyncConnection[Any]) -> int | None:
    holder = await one(conn, "SELECT holder FROM leadership WHERE expires_at > now()")
    return int(holder.split("/")[-2]) if holder else None


async def until(conn: psycopg.AsyncConnection[Any], query: str, *params: Any) -> Any:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.errors.UndefinedTable):  # not migrated yet
            value = await one(conn, query, *params)
            if value:
                return value
        await asyncio.sleep(0.01)
    raise SystemExit(f"timed out waiting for: {query}")


async def run_once(
    dsn: str, upstream: str, lease: float, work: Path, sig: signal.Signals
) -> tuple[float, float]:
    """(seconds to the successor's election, seconds to its first committed page)."""
    processes: list[asyncio.subprocess.Process] = []
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        for _ in range(2):
            config = work / f"replica-{free_port()}.toml"
            config.write_text(
                f'[storage]\nurl = "{dsn}"\nlease = {lease}\n'
                f"[api]\nport = {free_port()}\nstop_grace = 5\n"
                f'[logging]\nformat = "json"\nlevel = "warning"\n'
                f'[[upstreams]]\nname = "official"\nurl = "{upstream}"\npage_delay = 0\n'
                f"page_size = 20\nretries = 1\n"
            )
            command = (sys.executable, "-m", "sync", "--config", str(config), "serve")
            quiet = asyncio.subprocess.DEVNULL
            processes.append(
                await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=quiet, stderr=quiet)
            )
        interrupted = await until(
            conn, "SELECT id FROM passes WHERE outcome = 'running' AND pages >= 3"
        )
        pid = await leader_pid(conn)
        victim = next(p for p in processes if p.pid == pid)
        killed = time.monotonic()
        victim.send_signal(sig)
        await until(
            conn,
            "SELECT 1 FROM leadership WHERE expires_at > now() AND holder NOT LIKE %s",
            f"%/{pid}/%",
        )
        elected = time.monotonic() - killed
        await until(
            conn, "SELECT 1 FROM passes WHERE resumed_from = %s AND pages >= 1", interrupted
        )
        return elected, time.monotonic() - killed
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in processes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 30)
            if process.returncode is None:
                process.kill()
                await process.wait()
        await conn.close()


async def main(args: argparse.Namespace) -> int:
    data = json.loads((ROOT / "tests" / "data" / "registry-2025-12-12.json").read_text())
    fake = FakeRegistry(data["servers"])
    fake.page_delay = PAGE_DELAY
    upstream = TestServer(fake.app())
    await upstream.start_server()
    url = str(upstream.make_url("")).rstrip("/")
    sig = signal.Signals[f"SIG{args.signal}"]
    elections: list[float] = []
    pages: list[float] = []
    try:
        with server(args.dsn) as pg, tempfile.TemporaryDirectory() as work:
            for run in range(args.runs):
                with pg.database() as dsn:
                    elected, first_page = await run_once(dsn, url, args.lease, Path(work), sig)
                elections.append(elected)
                pages.append(first_page)
                print(
                    f"run {run + 1}: elected after {elected:.2f} s, "
                    f"first page committed after {first_page:.2f} s"
                )
    finally:
        await upstream.close()
    median, worst = statistics.median(pages), max(pages)
    what = sig.name
    print(
        f"{what} -> successor elected: median {statistics.median(elections):.2f} s, "
        f"max {max(elections):.2f} s (lease {args.lease:g} s)"
    )
    verdict = "meets" if worst < TARGET else "MISSES"
    print(
        f"{what} -> first page committed by the successor: median {median:.2f} s, "
        f"max {worst:.2f} s over {args.runs} runs; target < {TARGET:g} s: {verdict} it"
    )
    return 0 if worst < TARGET else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lease", type=float, default=10.0, help="[storage] lease, seconds")
    parser.add_argument(
        "--signal",
        choices=("KILL", "STOP"),
        default="KILL",
        help="KILL: the leader dies; STOP: it stalls (replaced once its lease ran out)",
    )
    parser.add_argument("--dsn", help="a server's maintenance DSN (default: a throwaway one)")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(main(parser.parse_args())))
