"""Where a full pass spends its time: wall seconds per phase, in-process.

Wraps (does not replace) the store's and the engine's calls with timers.
Usage: python bench/profile_sync.py CONFIG.toml UPSTREAM   (an empty store is made at the
configured path; the upstream is e.g. bench/upstream.py serving a generated catalogue)
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.config import load_config
from sync.curate import curation
from sync.metrics import Metrics
from sync.pull import upstream
from sync.pull.engine import Engine
from sync.store.sqlite.writer import SqliteStore

SPENT: collections.Counter[str] = collections.Counter()


def timed(owner: Any, name: str, label: str | None = None) -> None:
    inner: Callable[..., Any] = getattr(owner, name)
    key = label or name
    if asyncio.iscoroutinefunction(inner):

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                SPENT[key] += time.perf_counter() - started

    else:

        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                SPENT[key] += time.perf_counter() - started

    setattr(owner, name, wrapper)


async def main(config_path: Path, name: str) -> None:
    config = load_config(config_path)
    for path in config.storage.path.parent.glob(config.storage.path.name + "*"):
        path.unlink()
    store = await SqliteStore.open(config.storage.path)
    for method in ("upsert_entries", "entries_for", "served_state", "write_served", "record_page"):
        timed(store, method)
    timed(upstream, "parse_page", "parse (raw spans)")
    timed(curation, "build", "view build (rules, latest, _meta)")
    engine = Engine(config, store, Metrics())
    timed(engine, "_apply_page", "apply page (all of a page's transaction)")
    started = time.perf_counter()
    result = await engine.run(name, full=True)
    SPENT["whole pass"] = time.perf_counter() - started
    print(result.summary())
    for key, seconds in SPENT.most_common():
        print(f"{seconds:8.2f} s  {key}")
    await engine.close()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
