"""Full sync into PostgreSQL against a floor measured in the same run.

    python bench/pg_sync.py [--versions N] [--dsn postgresql://…] [--profile]

The floor fetches the same pages from the same upstream with aiohttp and inserts each raw item
into one PostgreSQL table, one transaction per page: the least a mirror on that database can
do. The figure is a real `subregistry sync --full` into an empty database. Target: >= 0.5x the
floor. Both run against the same server: `--dsn` names one the bench may create databases in,
else a throwaway cluster is started from the installed PostgreSQL binaries (as the test suite
does: fsync off, for both). Results go to bench/out/pg_results.json. `--profile` then runs
bench/profile_sync.py against another empty database: where the mirror's pass spends its time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import psycopg  # noqa: E402

from bench.catalogue import generate  # noqa: E402
from bench.run import PY, free_port, measure_rss, summary_event, wait_http  # noqa: E402
from tests.pg import PgServer, find_bindir, throwaway_cluster  # noqa: E402

RESULTS = OUT / "pg_results.json"


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[PgServer]:
    """A PostgreSQL server whose `database()` gives fresh empty databases."""
    if dsn:
        yield PgServer(dsn)
        return
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL binaries found: install PostgreSQL or pass --dsn")
    with throwaway_cluster(bindir) as started:
        yield started


@contextlib.contextmanager
def upstream(catalogue: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([PY, "bench/upstream.py", str(catalogue), str(port)], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/_admin/stats", timeout=300)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def pg_config(path: Path, dsn: str, upstream_url: str, port: int, extra: str = "") -> Path:
    """The bench's configuration, on PostgreSQL (`path` only places the control socket);
    `extra` goes into its [api] table."""
    path.write_text(
        f'[storage]\nurl = "{dsn}"\npath = "{path.with_suffix(".db")}"\n'
        f'[logging]\nformat = "json"\nlevel = "info"\n[api]\nport = {port}\n{extra}'
        f'[[upstreams]]\nname = "bench"\nurl = "{upstream_url}"\npage_delay = 0\n'
        f'retries = 2\ninterval = "1h"\n'
    )
    return path


async def floor(url: str, dsn: str) -> int:
    """The floor itself (run in its own process, as the mirror is)."""
    count = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
        await db.execute(
            'CREATE TABLE raw (name TEXT COLLATE "C", version TEXT COLLATE "C", item TEXT, '
            "PRIMARY KEY (name, version))"
        )
        cursor = None
        async with aiohttp.ClientSession() as session:
            while True:
                params = {"limit": "100", "include_deleted": "true"}
                if cursor:
                    params["cursor"] = cursor
                async with session.get(f"{url}/v0.1/servers", params=params) as response:
                    page = await response.json()
                rows = [
                    (
                        i["server"]["name"],
                        i["server"]["version"],
                        json.dumps(i, separators=(",", ":")),
                    )
                    for i in page["servers"]
                ]
                async with db.transaction(), db.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO raw VALUES (%s, %s, %s) ON CONFLICT (name, version) "
                        "DO UPDATE SET item = excluded.item",
                        rows,
                    )
                count += len(rows)
                cursor = page["metadata"].get("nextCursor")
                if not cursor:
                    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=250_000)
    parser.add_argument("--dsn", help="a server to create the bench databases in")
    parser.add_argument(
        "--profile", action="store_true", help="then profile the same pass in-process"
    )
    parser.add_argument("--floor", nargs=2, metavar=("URL", "DSN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        print(asyncio.run(floor(*args.floor)))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    n = args.versions
    catalogue = generate(n, OUT / f"catalogue-{n}.jsonl")
    print(f"# {n} versions, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}", flush=True)
    results: dict[str, Any] = {}
    with server(args.dsn) as pg, upstream(catalogue) as up:
        with pg.database() as dsn:
            wall, rss, out, _ = measure_rss([PY, "bench/pg_sync.py", "--floor", up, dsn])
        assert int(out) == n, out
        base = n / wall
        results["pg_floor_sync"] = {"rate": base, "wall": wall, "rss_mb": rss}
        print(f"pg_floor_sync: {base:,.0f} versions/s, {wall:.1f} s, peak RSS {rss:.0f} MB")
        with pg.database() as dsn:
            config = pg_config(OUT / "bench-pg.toml", dsn, up, free_port())
            command = [PY, "-m", "sync", "--config", str(config), "sync", "--full"]
            wall, rss, _, err = measure_rss(command)
            event = summary_event(err)
        rate = n / wall
        results["pg_full_sync"] = {
            "rate": rate,
            "ratio": rate / base,
            "wall": wall,
            "rss_mb": rss,
            "inserted": event["inserted"],
        }
        print(
            f"pg_full_sync: {rate:,.0f} versions/s ({rate / base:.2f}x the floor; target "
            f">= 0.5x), {wall:.1f} s, peak RSS {rss:.0f} MB, {event['inserted']} inserted"
        )
        if args.profile:
            with pg.database() as dsn:
                config = pg_config(OUT / "bench-pg.toml", dsn, up, free_port())
                profile = [PY, "bench/profile_sync.py", str(config), "bench"]
                subprocess.run(profile, cwd=ROOT, check=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**previous, **results}, indent=2))


if __name__ == "__main__":
    main()
