"""The fault suite: each case runs the real engine (or process) against a faulty fake
registry, then compares the mirror with the upstream's truth."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sync.config import Config
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store import Store, open_reader
from tests.fake_upstream import FakeRegistry
from tests.helpers import assert_mirrors, open_writer, served


class Waits:
    """An injected sleep that records what the engine asked to wait, and waits for nothing;
    with its `clock`, time passes only by those waits, so pacing is exact whatever the load."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.now = 0.0

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def build_engine(
    make_config: Callable[..., Config], fake_url: str, waits: Waits
) -> Callable[..., Any]:
    """An engine on a fresh store, with upstream settings overridden per case."""
    opened: list[tuple[Engine, Store]] = []

    async def build(**upstream: Any) -> Engine:
        config = make_config({"name": "official", "url": fake_url, **upstream})
        store = await open_writer(config.storage)
        engine = Engine(
            config, store, Metrics(), sleep=waits, backoff=(0.5, 8.0), monotonic=waits.clock
        )
        opened.append((engine, store))
        return engine

    build.opened = opened  # type: ignore[attr-defined]
    return build


@pytest.fixture
async def engines(build_engine: Any) -> AsyncIterator[Any]:
    yield build_engine
    for engine, store in build_engine.opened:
        await engine.close()
        await store.close()


async def check_truth(engine: Engine, fake: FakeRegistry) -> None:
    """Nothing lost, nothing corrupted: the served view equals upstream, the store is sound."""
    assert await engine.store.integrity_check() == "ok"
    reader = await open_reader(engine.config.storage)
    try:
        assert_mirrors(await served(reader), fake)
    finally:
        await reader.close()
