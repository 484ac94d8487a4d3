"""Where a full pass spends its time: wall seconds per phase, in-process.

Wraps (does not replace) the store's and the engine's calls with timers. Works on either
backend: SQLite (`[storage] path`, an empty store is made there) or PostgreSQL
(`[storage] url`: give it an empty database; the profile leads it for its duration, as the
one-shot `subregistry sync` does).

Usage: python bench/profile_sync.py CONFIG.toml UPSTREAM   (the upstream is e.g.
bench/upstream.py serving a generated catalogue; see bench/pg_sync.py --profile)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.config import Config, load_config
from sync.curate import curation
from sync.metrics import Metrics
from sync.pull import paging, upstream
from sync.pull.engine import Engine
from sync.store import Store, open_store

SPENT: collections.Counter[str] = collections.Counter()
STORE_METHODS = (
    "upsert_entries",
    "quarantine",
    "add_pending",
    "take_pending",
    "entries_for",
    "served_state",
    "write_served",
    "add_rule_hits",
    "record_page",
)


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


def statements() -> None:
    """On PostgreSQL, also time each statement the writer sends (keyed by its opening words)."""
    import psycopg  # noqa: PLC0415

    inner = psycopg.AsyncConnection.execute

    async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        key = "sql: " + " ".join(str(query).split()[:6])[:60]
        started = time.perf_counter()
        try:
            return await inner(self, query, *args, **kwargs)
        finally:
            SPENT[key] += time.perf_counter() - started

    psycopg.AsyncConnection.execute = execute  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def leading(config: Config, store: Store) -> AsyncIterator[None]:
    """A PostgreSQL store is written only by its leader: lead it, as `subregistry sync` does."""
    if config.storage.url is None:
        yield
        return
    from sync.store.postgres.leader import held  # noqa: PLC0415
    from sync.store.postgres.writer import PostgresStore  # noqa: PLC0415

    assert isinstance(store, PostgresStore)
    async with held(config.storage.url, lease=config.storage.lease, holder=store.holder) as lead:
        assert lead.epoch is not None
        await store.lead(lead.epoch, lead.holder)
        try:
            yield
        finally:
            store.unlead()


async def main(config_path: Path, name: str) -> None:
    config = load_config(config_path)
    if config.storage.url is None:
        for path in config.storage.path.parent.glob(config.storage.path.name + "*"):
            path.unlink()
    if config.storage.url is not None:
        statements()
    store = await open_store(config.storage)
    for method in STORE_METHODS:
        timed(store, method)
    # The pager calls `parse_page` through its own module's name.
    timed(paging, "parse_page", "parse (raw spans)")
    timed(upstream, "parse_page", "parse (raw spans)")
    timed(curation, "build", "view build (rules, latest, _meta)")
    timed(paging.Pager, "_apply_page", "apply page (all of a page's transaction)")
    timed(paging.Pager, "_complete", "complete (pending names, sweep)")
    engine = Engine(config, store, Metrics())
    try:
        async with leading(config, store):
            started = time.perf_counter()
            result = await engine.run(name, full=True)
            SPENT["whole pass"] = time.perf_counter() - started
    finally:
        await engine.close()
        await store.close()
    print(result.summary())
    for key, seconds in SPENT.most_common():
        print(f"{seconds:8.2f} s  {key}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
