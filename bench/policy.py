"""What a policy export costs: python bench/policy.py [--n 20000] [--repeat 3]

A mirror of `--n` versions (the real 2025-12-12 catalogue scaled as `bench/catalogue.py` does)
is synced once from the lean upstream in its own process. Then each `policy export` format
runs in this process through the real reader and exporter, writing to a file (a folder for
`static`), timed around the export only and with its peak Python memory traced. The baseline,
measured in the same run, is `subregistry export`'s work: every served row streamed from the
same reader into the list envelope, the least an export of the whole view can do; "parse every
row" adds reading each row's JSON, the floor for any format that looks inside entries. Runs
alternate between the formats and the best of `--repeat` is kept; peak memory (tracemalloc) is
taken on one more run of each, since tracing slows every allocation. Goals: every file format
within 3x the baseline's time, and memory bounded by one server's versions plus what the format
must keep whole (`static` streams its list; kiro streams its entries).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.catalogue import generate  # noqa: E402
from bench.run import OUT, PY, free_port, wait_http  # noqa: E402
from sync.config import Config, config_from_mapping  # noqa: E402
from sync.logs import configure_logging  # noqa: E402
from sync.metrics import Metrics  # noqa: E402
from sync.policy.catalogue import groups  # noqa: E402
from sync.policy.commands import EXPORTERS  # noqa: E402
from sync.policy.export import ExportOptions  # noqa: E402
from sync.policy.sinks import FileSink, TreeSink  # noqa: E402
from sync.pull.engine import Engine  # noqa: E402
from sync.store import Reader, open_reader, open_store  # noqa: E402


def config(db: Path, url: str) -> Config:
    return config_from_mapping(
        {
            "storage": {"path": str(db)},
            "logging": {"level": "warning"},
            "upstreams": [{"name": "bench", "url": url, "page_delay": 0, "retries": 2}],
        }
    )


async def sync_once(cfg: Config) -> None:
    store = await open_store(cfg.storage)
    engine = Engine(cfg, store, Metrics())
    try:
        result = await engine.run("bench", full=True)
        if result.outcome != "ok":
            raise SystemExit(f"the pass failed: {result.error}")
    finally:
        await engine.close()
        await store.close()


async def baseline(reader: Reader, target: Path) -> int:
    """`subregistry export`: the list envelope of every served row."""
    count = 0
    with target.open("w", encoding="utf-8") as out:
        out.write('{"servers":[')
        async for _, _, server, meta in reader.export("default"):
            out.write(("," if count else "") + f'{{"server":{server},"_meta":{meta}}}')
            count += 1
        out.write(f'],"metadata":{{"count":{count}}}}}\n')
    return count


def exporter(fmt: str, reader: Reader, target: Path) -> Callable[[], Awaitable[int]]:
    async def run() -> int:
        sink = TreeSink(target) if fmt == "static" else FileSink(target)
        result = await EXPORTERS[fmt](groups(reader, "default"), ExportOptions("default"), sink)
        return result.entries

    return run


async def timed(work: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    """Seconds, and what the work counted."""
    started = time.perf_counter()
    count = await work()
    return time.perf_counter() - started, count


async def traced(work: Callable[[], Awaitable[int]]) -> float:
    """Peak traced MB (a run of its own: tracing slows every allocation)."""
    tracemalloc.start()
    await work()
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return peak


async def parse_every_row(reader: Reader) -> int:
    """Reading every row's JSON, the floor for any export that looks inside entries."""
    count = 0
    async for _, _, server, meta in reader.export("default"):
        json.loads(server)
        json.loads(meta)
        count += 1
    return count


async def measure(cfg: Config, repeat: int) -> dict[str, tuple[float, float, int]]:
    reader = await open_reader(cfg.storage, connections=1)
    best: dict[str, tuple[float, float, int]] = {}
    try:
        for _ in range(repeat):
            runs: dict[str, Callable[[], Awaitable[int]]] = {
                "export (baseline)": lambda: baseline(reader, OUT / "policy-baseline.json"),
                "parse every row": lambda: parse_every_row(reader),
            }
            for fmt in EXPORTERS:
                target = OUT / (f"policy-{fmt}" + ("" if fmt == "static" else ".json"))
                runs[fmt] = exporter(fmt, reader, target)
            for name, work in runs.items():
                # A fresh tree each run, removed before the clock starts.
                shutil.rmtree(OUT / "policy-static", ignore_errors=True)
                seconds, count = await timed(work)
                old = best.get(name, (seconds, 0.0, count))
                best[name] = (min(old[0], seconds), 0.0, count)
        for name, work in runs.items():
            shutil.rmtree(OUT / "policy-static", ignore_errors=True)
            best[name] = (best[name][0], await traced(work), best[name][2])
    finally:
        await reader.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    db = OUT / f"policy-{args.n}.db"
    configure_logging(config(db, "http://127.0.0.1:9").logging)
    source = generate(args.n, OUT / f"catalogue-{args.n}.jsonl")
    if not db.exists():
        port = free_port()
        upstream = subprocess.Popen([PY, "bench/upstream.py", str(source), str(port)], cwd=ROOT)
        try:
            wait_http(f"http://127.0.0.1:{port}/_admin/stats", timeout=120)
            asyncio.run(sync_once(config(db, f"http://127.0.0.1:{port}")))
        finally:
            upstream.send_signal(signal.SIGTERM)
            upstream.wait(timeout=30)
    best = asyncio.run(measure(config(db, "http://127.0.0.1:9"), args.repeat))
    base_s, base_mb, _ = best["export (baseline)"]
    print(f"# {args.n} versions, best of {args.repeat} (time); peak traced memory of one more run")
    for name, (seconds, peak, count) in best.items():
        print(
            f"{name:18} {seconds:6.2f} s ({seconds / base_s:4.2f}x)  "
            f"peak {peak:7.1f} MB ({peak / base_mb:5.2f}x)  {count} entries"
        )


if __name__ == "__main__":
    main()
