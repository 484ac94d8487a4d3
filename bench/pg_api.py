"""List API, uncached, at 32 connections: PostgreSQL against SQLite, two replicas against one.

    python bench/pg_api.py [--versions N] [--seconds S] [--dsn postgresql://…]

One mirror, built once: a full sync into SQLite, then `subregistry copy --to` into an empty
database, so both backends serve exactly the same rows. Each scenario follows the same 300
`limit=100` cursor pages with `[api] cache_mb = 0` (every request reaches the store):
SQLite, one replica; PostgreSQL, one replica; PostgreSQL, two replicas (two `serve --no-sync`
processes on the same database, 16 connections each from two wrk processes running at once;
their rates add up). Target: PostgreSQL >= 0.5x SQLite for one replica. Needs wrk. Results go
to bench/out/pg_results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

from bench.catalogue import generate  # noqa: E402
from bench.pg_sync import RESULTS, pg_config, server, upstream  # noqa: E402
from bench.run import PY, WRK_SCRIPT, free_port, measure_rss, write_config  # noqa: E402


@contextlib.contextmanager
def serving(config: Path, port: int) -> Iterator[str]:
    log = config.with_suffix(".log")
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [PY, "-m", "sync", "--config", str(config), "serve", "--no-sync"],
            cwd=ROOT,
            stderr=stderr,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not healthy(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve on {config} failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=60)


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/v0.1/health", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def pages(base: str, limit: int = 300) -> list[str]:
    urls = []
    cursor = None
    for _ in range(limit):
        url = "/v0.1/servers?limit=100" + (f"&cursor={cursor}" if cursor else "")
        with urllib.request.urlopen(base + url) as response:  # noqa: S310
            body = response.read()
        urls.append(url)
        cursor = json.loads(body)["metadata"].get("nextCursor")
        if not cursor:
            break
    return urls


def wrk_all(bases: list[str], urls: list[str], seconds: int, name: str) -> dict[str, float]:
    """32 connections in all, split evenly over `bases`, run at once; rates add up, the
    latency figures are the worst of them."""
    listing = OUT / f"urls-{name}.txt"
    listing.write_text("\n".join(urls) + "\n")
    script = OUT / f"wrk-{name}.lua"
    script.write_text(WRK_SCRIPT % listing)
    each = 32 // len(bases)
    threads = max(1, 2 // len(bases))
    runs = [
        subprocess.Popen(
            [
                "wrk",
                f"-t{threads}",
                f"-c{each}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(script),
                b,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for b in bases
    ]
    texts = [r.communicate()[0] for r in runs]
    figures: dict[str, float] = {"rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "non_2xx": 0.0}
    for text in texts:
        figures["rps"] += float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1])  # type: ignore[index]
        for pct in ("50", "99"):
            match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
            assert match is not None, text
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
            figures[f"p{pct}_ms"] = max(figures[f"p{pct}_ms"], float(match[1]) * scale)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        figures["non_2xx"] += float(errors[1]) if errors else 0.0
    return figures


def line(figures: dict[str, float]) -> str:
    return (
        f"{figures['rps']:,.0f} req/s, p50 {figures['p50_ms']:.2f} ms, "
        f"p99 {figures['p99_ms']:.2f} ms, non-2xx {figures['non_2xx']:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=250_000)
    parser.add_argument("--seconds", type=int, default=10, help="per wrk scenario")
    parser.add_argument("--dsn", help="a server to create the bench database in")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    n = args.versions
    catalogue = generate(n, OUT / f"catalogue-{n}.jsonl")
    print(f"# {n} versions, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}", flush=True)
    db = OUT / f"pg-api-{n}.db"
    results: dict[str, Any] = {}
    with server(args.dsn) as pg, upstream(catalogue) as up, pg.database() as dsn:
        sqlite = write_config(OUT / "bench-pg-api-sqlite.toml", db, up, free_port())
        sqlite.write_text(sqlite.read_text().replace("[api]\n", "[api]\ncache_mb = 0\n"))
        if not db.exists():
            measure_rss([PY, "-m", "sync", "--config", str(sqlite), "sync", "--full"])
        _, _, out, _ = measure_rss([PY, "-m", "sync", "--config", str(sqlite), "copy", "--to", dsn])
        print(f"# {out.strip()}", flush=True)
        port = int(re.search(r"port = (\d+)", sqlite.read_text())[1])  # type: ignore[index]
        with serving(sqlite, port) as base:
            urls = pages(base)
            one_sqlite = wrk_all([base], urls, args.seconds, "pg-api-sqlite")
        print(f"api_list_uncached_sqlite: {line(one_sqlite)}", flush=True)
        ports = [free_port(), free_port()]
        configs = [
            pg_config(OUT / f"bench-pg-api-{i}.toml", dsn, up, p, "cache_mb = 0\n")
            for i, p in enumerate(ports)
        ]
        with serving(configs[0], ports[0]) as first:
            one_pg = wrk_all([first], urls, args.seconds, "pg-api-one")
            print(
                f"api_list_uncached_pg: {line(one_pg)} "
                f"({one_pg['rps'] / one_sqlite['rps']:.2f}x SQLite; target >= 0.5x)",
                flush=True,
            )
            with serving(configs[1], ports[1]) as second:
                two_pg = wrk_all([first, second], urls, args.seconds, "pg-api-two")
        print(
            f"api_list_uncached_pg_two_replicas: {line(two_pg)} "
            f"({two_pg['rps'] / one_pg['rps']:.2f}x one replica)",
            flush=True,
        )
    results["api_list_uncached_sqlite"] = one_sqlite
    results["api_list_uncached_pg"] = {**one_pg, "ratio": one_pg["rps"] / one_sqlite["rps"]}
    results["api_list_uncached_pg_two"] = {**two_pg, "ratio": two_pg["rps"] / one_pg["rps"]}
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**previous, **results}, indent=2))


if __name__ == "__main__":
    main()
