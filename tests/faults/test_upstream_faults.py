"""Upstream faults: every one survived, nothing lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from sync.pull.upstream import parse_retry_after
from sync.store import open_reader
from tests.fake_upstream import FakeRegistry
from tests.faults.conftest import Waits, check_truth
from tests.helpers import BOTH_BACKENDS


class TestTransient:
    async def test_500_and_503_bursts(self, engines: Any, fake: FakeRegistry) -> None:
        engine = await engines(retries=5)
        fake.fail(500, times=3)
        fake.fail(503, body="<html>Service Unavailable</html>", times=2)
        result = await engine.run("official")
        assert result.outcome == "ok", result.error
        await check_truth(engine, fake)

    async def test_429_honours_retry_after_and_slows_the_whole_upstream(
        self, engines: Any, fake: FakeRegistry, waits: Waits
    ) -> None:
        engine = await engines(retries=2, page_delay=0.25)

        def throttle_page_3(count: int) -> None:
            if count == 3:
                fake.fail(
                    429, body="<html>429 Too Many Requests</html>", headers={"Retry-After": "7"}
                )

        fake.after_page = throttle_page_3
        result = await engine.run("official")
        assert result.outcome == "ok", result.error
        assert 7.0 in waits.seconds  # the upstream's own advice
        index = waits.seconds.index(7.0)
        # Time passes only by the waits (the fixture's clock), so the pace is exact: before
        # the 429 it is page_delay; the 429 sets a 1 s penalty (its own retry already waited
        # 7 s), which halves with each good answer until it is gone.
        assert waits.seconds[:index] == [0.25] * index
        after = waits.seconds[index + 1 :]
        assert after[:5] == [0.75, 0.5, 0.375, 0.3125, 0.28125]
        assert set(after[5:]) == {0.25}
        await check_truth(engine, fake)

    def test_retry_after_forms(self) -> None:
        now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
        assert parse_retry_after("120", now) == 120.0
        assert (
            parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now)
            == 30.0
        )
        assert (
            parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
        )
        assert parse_retry_after("soon", now) is None
        assert parse_retry_after("99999", now) == 600.0  # capped

    async def test_response_slower_than_timeout(self, engines: Any, fake: FakeRegistry) -> None:
        engine = await engines(timeout=0.3, retries=2)
        fake.slow(1.0)
        result = await engine.run("official")
        assert result.outcome == "ok", result.error
        await check_truth(engine, fake)

    async def test_truncated_body_and_html_200(self, engines: Any, fake: FakeRegistry) -> None:
        engine = await engines(retries=4)
        fake.truncate()
        fake.fail(200, body="<html><body>Gateway Timeout</body></html>")
        fake.fail(200, body='{"servers":[{"server":{"name":"io.github.a/b"')
        result = await engine.run("official")
        assert result.outcome == "ok", result.error
        await check_truth(engine, fake)

    async def test_connection_refused_keeps_the_mirror(
        self, engines: Any, fake: FakeRegistry
    ) -> None:
        """The pass fails with the address in its error; the mirror and the checkpoint stay
        as the last good pass left them."""
        engine = await engines()
        first = await engine.run("official")
        await engine.close()
        await engine.store.close()
        down = await engines(retries=1, url="http://127.0.0.1:9")  # same mirror file
        result = await down.run("official")
        assert result.outcome == "failed"
        assert "127.0.0.1:9" in (result.error or "")
        async with down.store.transaction():
            state = await down.store.state("official")
        assert state.checkpoint == first.checkpoint
        assert state.failures == 1 and state.last_error == result.error
        await check_truth(down, fake)


@BOTH_BACKENDS
class TestBadContent:
    async def test_one_invalid_entry_is_quarantined(self, engines: Any, fake: FakeRegistry) -> None:
        engine = await engines()
        poison = fake.add_raw({"name": "io.github.bad/entry", "version": 7, "description": "x"})
        result = await engine.run("official")
        assert result.outcome == "ok" and result.counts.quarantined == 1
        del fake.rows[poison.key]
        await check_truth(engine, fake)

    async def test_quarantine_keeps_reasons_and_releases_fixed_entries(
        self, engines: Any, fake: FakeRegistry
    ) -> None:
        """Each poison entry is held with its reason and upstream; once upstream fixes it,
        it lands and leaves quarantine."""
        engine = await engines()
        fake.add_raw({"name": "not a valid name", "version": "1.0.0", "description": "x"})
        fake.add_raw({"name": "io.github.poison/no-version", "description": "x"})
        fixed = fake.add_raw({"name": "io.github.poison/bad-status", "version": "1"})
        fixed.official["status"] = "banned"
        result = await engine.run("official")
        assert (result.outcome, result.counts.quarantined, result.counts.inserted) == (
            "ok",
            3,
            2628,
        )
        reader = await open_reader(engine.config.storage)
        try:
            held = {q.key: (q.upstream, q.reason) for q in await reader.quarantine()}
            assert held["not a valid name@1.0.0"] == (
                "official",
                "name does not match the server.json pattern namespace/name",
            )
            assert held["io.github.poison/bad-status@1"][1] == "unknown status 'banned'"
            assert any(r == "missing or non-string 'version'" for _, r in held.values())
            fixed.official["status"] = "active"
            fake.edit("io.github.poison/bad-status", "1")
            await engine.run("official")
            assert len(await reader.quarantine("official")) == 2
            assert (
                await reader.version(
                    "default", "io.github.poison/bad-status", "1", include_deleted=False
                )
                is not None
            )
        finally:
            await reader.close()

    async def test_oversized_entry_is_quarantined(self, engines: Any, fake: FakeRegistry) -> None:
        engine = await engines(max_entry_bytes=50_000)
        result = await engine.run("official")
        assert result.counts.quarantined == 1  # the 61.6 kB entry of the real catalogue
        [big] = [k for k, r in fake.rows.items() if len(r.item_text()) > 50_000]
        del fake.rows[big]
        await check_truth(engine, fake)

    async def test_oversized_response_is_never_read_whole(
        self, engines: Any, fake: FakeRegistry
    ) -> None:
        """A page over max_response_bytes is refused, then re-read in smaller pages; only
        an entry whose own one-entry page is over the cap is quarantined (named from the
        ends of its body), and the listing goes on past it."""
        engine = await engines(max_response_bytes=50_000, page_size=20, retries=1)
        result = await engine.run("official")
        assert result.outcome == "ok", result.error

        def alone(key: tuple[str, str]) -> int:
            meta = json.dumps({"count": 1, "nextCursor": ":".join(key)})
            return len(f'{{"servers":[{fake.rows[key].item_text()}],"metadata":{meta}}}'.encode())

        too_big = {k for k in fake.rows if alone(k) > 50_000}
        assert len(too_big) == 1  # the largest entry of the real catalogue (58.6 kB)
        reader = await open_reader(engine.config.storage)
        try:
            quarantined = {q.key for q in await reader.quarantine("official")}
        finally:
            await reader.close()
        assert quarantined == {f"{n}@{v}" for n, v in too_big}
        for key in too_big:
            del fake.rows[key]
        await check_truth(engine, fake)

    async def test_duplicates_across_pages(self, engines: Any, fake: FakeRegistry) -> None:
        engine = await engines()
        fake.repeat_across_pages = True
        result = await engine.run("official")
        assert result.outcome == "ok"
        assert result.counts.inserted == 2628 and result.counts.unchanged > 20
        await check_truth(engine, fake)

    async def test_entry_changed_while_paging(self, engines: Any, fake: FakeRegistry) -> None:
        engine = await engines()
        first, last = min(fake.rows), max(fake.rows)

        def edit(count: int) -> None:
            if count == 5:
                fake.edit(*first, description="changed behind the cursor")
                fake.edit(*last, description="changed ahead of the cursor")

        fake.after_page = edit
        await engine.run("official")
        fake.after_page = None
        await engine.run("official")
        await check_truth(engine, fake)

    async def test_empty_list_on_a_full_pass(self, engines: Any, fake: FakeRegistry) -> None:
        engine = await engines()
        await engine.run("official")
        truth = dict(fake.rows)
        fake.rows.clear()
        result = await engine.run("official", full=True)
        assert result.outcome == "ok" and result.counts.removed == 0
        fake.rows.update(truth)
        await check_truth(engine, fake)


class TestRedirects:
    async def test_redirect_to_another_host_is_refused(
        self, engines: Any, fake: FakeRegistry, fake_url: str
    ) -> None:
        engine = await engines()
        fake.redirect(fake_url.replace("127.0.0.1", "localhost") + "/v0.1/servers")
        result = await engine.run("official")
        assert result.outcome == "failed"
        assert "refusing redirect" in (result.error or "") and "follow_redirects" in (
            result.error or ""
        )

    async def test_same_host_redirect_and_allowed_cross_host(
        self, engines: Any, fake: FakeRegistry, fake_url: str
    ) -> None:
        engine = await engines(follow_redirects=True)
        other = TestServer(FakeRegistry(list(_items(fake))).app())
        await other.start_server()
        try:
            target = str(other.make_url("/v0.1/servers?limit=100&include_deleted=true"))
            fake.redirect(target.replace("127.0.0.1", "localhost"))
            result = await engine.run("official")
        finally:
            await other.close()
        assert result.outcome == "ok", result.error
        await check_truth(engine, fake)


def _items(fake: FakeRegistry) -> list[dict[str, Any]]:
    return [{"server": r.server, "_meta": r.meta()} for r in fake.rows.values()]


@BOTH_BACKENDS
class TestLongOutage:
    async def test_down_for_many_passes_then_back(self, engines: Any, fake: FakeRegistry) -> None:
        """The circuit opens after failure_threshold passes, skips with a growing delay,
        probes when it expires, and closes on the first good pass."""
        engine = await engines(retries=0, failure_threshold=2, interval=60, circuit_max_delay=600)
        now = [datetime.now(UTC)]
        engine.clock = lambda: now[0]
        assert (await engine.run("official")).outcome == "ok"
        fake.fail(503, times=1000)
        outcomes = []
        for _ in range(12):
            now[0] += timedelta(seconds=61)
            outcomes.append((await engine.run("official")).outcome)
        assert outcomes[:2] == ["failed", "failed"]
        assert "skipped" in outcomes[2:]
        async with engine.store.transaction():
            state = await engine.store.state("official")
        delays = [(datetime.fromisoformat(state.circuit_until or "") - now[0]).total_seconds()]
        assert 0 < delays[0] <= 600
        fake.faults.clear()
        fake.edit(*min(fake.rows), description="changed during the outage")
        now[0] += timedelta(seconds=601)
        result = await engine.run("official")
        assert result.outcome == "ok"
        async with engine.store.transaction():
            state = await engine.store.state("official")
        assert state.circuit_until is None and state.failures == 0
        await check_truth(engine, fake)

    @pytest.mark.parametrize("failures", [2, 3, 5, 12])
    async def test_circuit_delay_grows_and_is_capped(
        self, engines: Any, fake: FakeRegistry, failures: int
    ) -> None:
        engine = await engines(retries=0, failure_threshold=2, interval=60, circuit_max_delay=600)
        now = [datetime.now(UTC)]
        engine.clock = lambda: now[0]
        fake.fail(503, times=1000)
        for _ in range(failures):
            await engine.run("official", ignore_circuit=True)
        async with engine.store.transaction():
            state = await engine.store.state("official")
        delay = (datetime.fromisoformat(state.circuit_until or "") - now[0]).total_seconds()
        assert delay == pytest.approx(min(60 * 2 ** (failures - 2), 600), abs=1)
