"""What named views cost: python bench/views.py [--n 2628] [--repeat 3] [--profile VIEWS]

A first full pass and a reapply of every view (no upstream request) with 0, 1 and 3 named
views over the real 2025-12-12 catalogue (`--n` scales it as `bench/catalogue.py` does),
served by the lean upstream in its own process; the pass and the reapply run in this
process through the real engine and SQLite store, timed around those calls only (no process
start). So is the pure part a reapply repeats per view ("curation only": `build_views` over
every stored entry, in memory). The baseline is 0 views, measured in the same run; runs
alternate between the view counts and the best of `--repeat` is kept, so a busy machine does
not decide the figure. Target: at most (1 + 0.3 x views) x the baseline. `--profile 3`
prints where a 3-view reapply spends its time (cProfile, by cumulative time).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.catalogue import generate  # noqa: E402
from bench.run import OUT, PY, free_port, wait_http  # noqa: E402
from sync.config import Config, config_from_mapping  # noqa: E402
from sync.curate.curation import Curator  # noqa: E402
from sync.curate.views import build_views  # noqa: E402
from sync.logs import configure_logging  # noqa: E402
from sync.metrics import Metrics  # noqa: E402
from sync.pull.engine import Engine  # noqa: E402
from sync.store import open_store  # noqa: E402

# Three team views of different shapes: a namespace subset with enrichment and a status
# filter, a large subset with a version cap, and a small hand-picked list with an override.
VIEWS: list[dict[str, Any]] = [
    {
        "name": "payments",
        "base_path": "/teams/payments",
        "filter": {"include": ["ai.*", "com.*"], "statuses": ["active"]},
        "enrich": [{"match": "ai.*", "meta": {"team": "payments"}}],
    },
    {
        "name": "data",
        "base_path": "/teams/data",
        "filter": {"include": ["io.github.*"], "latest_versions": 3},
    },
    {
        "name": "contractors",
        "base_path": "/teams/contractors",
        "filter": {"include": ["io.github.brave/*", "ai.exa/*", "com.*"]},
        "override": [{"name": "com.*", "status": "deprecated", "status_message": "ask first"}],
    },
]
_NOWHERE = "http://127.0.0.1:9"  # for configurations that never fetch
# The global rules every run shares (a realistic mirror has some).
GLOBAL: dict[str, Any] = {
    "filter": {"exclude_regex": ["(?i)casino"]},
    "enrich": [{"match": "io.github.*", "meta": {"source": "github"}}],
}


def config(db: Path, url: str, views: int) -> Config:
    return config_from_mapping(
        {
            "storage": {"path": str(db)},
            "logging": {"level": "warning"},
            "upstreams": [{"name": "bench", "url": url, "page_delay": 0, "retries": 2}],
            "views": VIEWS[:views],
            **GLOBAL,
        }
    )


async def one_run(url: str, views: int, profile: cProfile.Profile | None) -> tuple[float, float]:
    """Seconds for a first full pass and for a reapply of every view, into a fresh file."""
    db = OUT / f"views-{views}.db"
    for path in OUT.glob(f"views-{views}.db*"):
        path.unlink()
    cfg = config(db, url, views)
    store = await open_store(cfg.storage)
    engine = Engine(cfg, store, Metrics())
    try:
        started = time.perf_counter()
        result = await engine.run("bench", full=True)
        full = time.perf_counter() - started
        if result.outcome != "ok":
            raise SystemExit(f"the pass with {views} views failed: {result.error}")
        if profile is not None:
            profile.enable()
        started = time.perf_counter()
        await engine.curator.reapply()
        reapply = time.perf_counter() - started
        if profile is not None:
            profile.disable()
    finally:
        await engine.close()
        await store.close()
    return full, reapply


async def curation_only(counts: list[int], repeat: int) -> dict[int, float]:
    """Seconds for the pure part a reapply repeats per view (`build_views` over every stored
    entry, no store read or write), from the file the last 3-view run left."""
    store = await open_store(config(OUT / f"views-{max(counts)}.db", _NOWHERE, 0).storage)
    try:
        async with store.transaction():
            names = await store.names_after("", 10**9)
            entries = await store.entries_for(names, with_server=False)
    finally:
        await store.close()
    best: dict[int, float] = {}
    for _ in range(repeat):
        for views in counts:
            curator = Curator(config(OUT / "unused.db", _NOWHERE, views), store, Metrics())
            started = time.perf_counter()
            build_views(
                entries,
                curator.order,
                curator.rules,
                curator.views,
                "bench",
                {},
                list(curator.digests),
            )
            best[views] = min(best.get(views, 1e9), time.perf_counter() - started)
    return best


async def measure(
    url: str, counts: list[int], repeat: int
) -> tuple[dict[int, tuple[float, float]], dict[int, float]]:
    best: dict[int, tuple[float, float]] = {}
    for _ in range(repeat):
        for views in counts:
            full, reapply = await one_run(url, views, None)
            old = best.get(views, (full, reapply))
            best[views] = (min(old[0], full), min(old[1], reapply))
    return best, await curation_only(counts, repeat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2628)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=int, choices=[1, 2, 3])
    args = parser.parse_args()
    configure_logging(config(OUT / "unused.db", _NOWHERE, 0).logging)
    source = generate(args.n, OUT / f"catalogue-{args.n}.jsonl")
    port = free_port()
    upstream = subprocess.Popen([PY, "bench/upstream.py", str(source), str(port)], cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/_admin/stats", timeout=120)
        url = f"http://127.0.0.1:{port}"
        counts = [0, 1, 3]
        best, pure = asyncio.run(measure(url, counts, args.repeat))
        print(f"# {args.n} versions, best of {args.repeat}; target (1 + 0.3 x views) x 0 views")
        base_full, base_reapply = best[0]
        for views in counts:
            full, reapply = best[views]
            target = 1 + 0.3 * views
            print(
                f"views={views}: full pass {full:.2f} s ({full / base_full:.2f}x), "
                f"reapply {reapply:.2f} s ({reapply / base_reapply:.2f}x), "
                f"curation only {pure[views]:.2f} s ({pure[views] / pure[0]:.2f}x), "
                f"target {target:.1f}x"
            )
        if args.profile:
            profile = cProfile.Profile()
            asyncio.run(one_run(url, args.profile, profile))
            pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    finally:
        upstream.send_signal(signal.SIGTERM)
        upstream.wait(timeout=30)


if __name__ == "__main__":
    main()
