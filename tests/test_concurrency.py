"""At most one pass per upstream at a time in a process."""

from __future__ import annotations

import asyncio

from sync.config import Config
from sync.pull.engine import Engine
from tests.fake_upstream import FakeRegistry


async def test_one_pass_per_upstream_at_a_time(
    engine: Engine, config: Config, fake: FakeRegistry
) -> None:
    fake.page_delay = 0.02
    first, second = await asyncio.gather(engine.run("official"), engine.run("official"))
    assert sorted([first.outcome, second.outcome]) == ["ok", "skipped"]
    assert "already running" in (first.error or second.error or "")
