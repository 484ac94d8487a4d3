"""The sync engine against a fake registry replaying the real 2025-12-12 catalogue."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sync import __version__
from sync.config import Config
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store import ListQuery, Reader, Store
from tests.fake_upstream import FakeRegistry
from tests.helpers import (
    BOTH_BACKENDS,
    assert_mirrors,
    latest_by_name,
    no_sleep,
    official,
    served,
)

MULTI = "com.fenetresurciel.verylongmcp/mcp-server-template-nodejs"  # 72 versions


@BOTH_BACKENDS
class TestFullPass:
    async def test_mirrors_every_version_byte_for_byte(
        self, engine: Engine, reader: Reader, fake: FakeRegistry
    ) -> None:
        """A first pass is full, pages to the end and stores each server JSON as sent."""
        result = await engine.run("official")
        assert (result.outcome, result.mode) == ("ok", "full")
        assert result.counts.inserted == 2628
        assert result.counts.pages == 27  # 26 full pages, then the official empty-page quirk
        mirror = await served(reader)
        assert len(mirror) == 2628
        assert_mirrors(mirror, fake)
        assert all(q.get("include_deleted") == "true" for q in fake.requests)
        assert fake.user_agents == {
            f"mcp-subregistry/{__version__} (+https://github.com/modelcontextprotocol/registry)"
        }

    async def test_exactly_one_latest_per_name(self, engine: Engine, reader: Reader) -> None:
        await engine.run("official")
        latest = latest_by_name(await served(reader))
        assert all(len(v) == 1 for v in latest.values()), [
            n for n, v in latest.items() if len(v) != 1
        ]

    async def test_second_full_pass_changes_nothing(self, engine: Engine, reader: Reader) -> None:
        """Idempotent writes: re-reading the same catalogue leaves the served view untouched."""
        await engine.run("official")
        before = await served(reader)
        again = await engine.run("official", full=True)
        assert (again.counts.inserted, again.counts.updated) == (0, 0)
        assert again.counts.unchanged == 2628
        assert await served(reader) == before

    async def test_mirror_updated_at_is_unique_and_increasing(
        self, engine: Engine, reader: Reader
    ) -> None:
        await engine.run("official")
        stamps = [official(item)["updatedAt"] for item in (await served(reader)).values()]
        assert len(set(stamps)) == len(stamps)


@BOTH_BACKENDS
class TestIncremental:
    async def test_five_changes_take_one_request(
        self, engine: Engine, reader: Reader, fake: FakeRegistry
    ) -> None:
        first = await engine.run("official")
        keys = sorted(fake.rows)[::500][:5]
        for name, version in keys[:3]:
            fake.edit(name, version, description="changed upstream")
        fake.set_status(*keys[3], "deprecated", "use something else")
        fake.set_status(*keys[4], "deleted")
        fake.requests.clear()
        second = await engine.run("official")
        assert (second.outcome, second.mode) == ("ok", "incremental")
        assert len(fake.requests) == 1
        assert fake.requests[0]["updated_since"] == first.checkpoint
        assert second.counts.updated == 5
        mirror = await served(reader)
        assert_mirrors(mirror, fake)
        assert official(mirror[keys[3]])["statusMessage"] == "use something else"
        assert official(mirror[keys[4]])["status"] == "deleted"
        assert await reader.version("default", *keys[4], include_deleted=False) is None

    async def test_change_behind_the_cursor_is_caught_next_pass(
        self, engine: Engine, reader: Reader, fake: FakeRegistry
    ) -> None:
        """Pages are name-ordered: an entry edited after its page was read comes next time."""
        first_key = min(fake.rows)

        def edit_on_page_3(count: int) -> None:
            if count == 3:
                fake.edit(*first_key, description="edited while paging")

        fake.after_page = edit_on_page_3
        await engine.run("official")
        fake.after_page = None
        assert '"edited while paging"' not in (await served(reader))[first_key]["server"]
        await engine.run("official")
        assert '"edited while paging"' in (await served(reader))[first_key]["server"]

    async def test_late_commit_inside_the_overlap_is_not_lost(
        self, engine: Engine, reader: Reader, fake: FakeRegistry
    ) -> None:
        """A row stamped before the pass started but visible only after it still arrives."""
        first = await engine.run("official")
        assert first.checkpoint is not None
        row = fake.publish(
            {"name": "io.github.late/commit", "version": "1.0.0", "description": "late"}
        )
        started = datetime.fromisoformat(first.checkpoint) + timedelta(seconds=240)
        row.official["updatedAt"] = row.official["publishedAt"] = started.strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        )
        await engine.run("official")
        assert ("io.github.late/commit", "1.0.0") in await served(reader)

    async def test_checkpoint_follows_the_upstream_clock(
        self, engine: Engine, fake: FakeRegistry, config: Config
    ) -> None:
        """The upstream's Date header, not our clock, bounds what it has already shown us."""
        fake.date = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        result = await engine.run("official")
        overlap = timedelta(seconds=config.upstreams[0].overlap)
        assert result.checkpoint == (fake.date - overlap).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@BOTH_BACKENDS
class TestLatestAndStatus:
    async def test_latest_flips_without_the_old_latest_resent(
        self, engine: Engine, reader: Reader, fake: FakeRegistry
    ) -> None:
        await engine.run("official")
        before = latest_by_name(await served(reader))[MULTI]
        template = dict(fake.rows[(MULTI, before[0])].server)
        fake.publish({**template, "version": "99.0.0"})
        fake.publish({**template, "version": "0.0.0-alpha"})  # lower: must not take over
        fake.requests.clear()
        result = await engine.run("official")
        assert result.counts.inserted == 2 and result.counts.updated == 0
        mirror = await served(reader)
        assert latest_by_name(mirror)[MULTI] == ["99.0.0"]
        assert official(mirror[(MULTI, before[0])])["isLatest"] is False

    async def test_deleting_the_latest_promotes_the_next(
        self, engine: Engine, reader: Reader, fake: FakeRegistry
    ) -> None:
        await engine.run("official")
        latest = latest_by_name(await served(reader))[MULTI][0]
        fake.set_status(MULTI, latest, "deleted")
        await engine.run("official")
        mirror = await served(reader)
        now_latest = latest_by_name(mirror)[MULTI]
        assert len(now_latest) == 1 and now_latest[0] != latest
        assert official(mirror[(MULTI, now_latest[0])])["status"] == "active"
        item = await reader.version("default", MULTI, "latest", include_deleted=False)
        assert item is not None and item[1] == now_latest[0]

    async def test_deprecated_then_reactivated(
        self, engine: Engine, reader: Reader, fake: FakeRegistry
    ) -> None:
        await engine.run("official")
        key = sorted(fake.rows)[10]
        fake.set_status(*key, "deprecated", "old")
        await engine.run("official")
        fake.set_status(*key, "active")
        await engine.run("official")
        facts = official((await served(reader))[key])
        assert facts["status"] == "active" and "statusMessage" not in facts
        assert facts["statusChangedAt"] == fake.rows[key].official["statusChangedAt"]


@BOTH_BACKENDS
class TestReconcile:
    async def test_empty_upstream_on_a_full_pass_wipes_nothing(
        self, engine: Engine, reader: Reader, fake: FakeRegistry
    ) -> None:
        await engine.run("official")
        before = await served(reader)
        fake.rows.clear()
        result = await engine.run("official", full=True)
        assert result.outcome == "ok" and result.counts.removed == 0
        assert await served(reader) == before

    async def test_truncated_upstream_wipes_nothing(
        self, engine: Engine, reader: Reader, fake: FakeRegistry
    ) -> None:
        await engine.run("official")
        for key in sorted(fake.rows)[1000:]:
            del fake.rows[key]
        result = await engine.run("official", full=True)
        assert result.counts.removed == 0
        assert len(await served(reader)) == 2628

    async def test_versions_gone_upstream_are_withdrawn(
        self, engine: Engine, reader: Reader, fake: FakeRegistry
    ) -> None:
        """Two complete full listings that agree withdraw what vanished; the served row then
        becomes a deleted tombstone, so downstream mirrors pulling with updated_since learn
        about it. After the first listing alone nothing a client sees changes."""
        await engine.run("official")
        before = await served(reader)
        gone = sorted(fake.rows)[::10]
        for key in gone:
            del fake.rows[key]
        first = await engine.run("official", full=True)
        assert first.counts.removed == 0
        assert await served(reader) == before
        result = await engine.run("official", full=True)
        assert result.counts.removed == len(gone)
        mirror = await served(reader)
        for key in gone:
            assert official(mirror[key])["status"] == "deleted"
            assert "withdrawn" in mirror[key]["meta"]["io.github.mcp-subregistry"]
        assert all(len(v) <= 1 for v in latest_by_name(mirror).values())


def start_pass_hanging_on_page_4(
    config: Config, store: Store, fake: FakeRegistry
) -> tuple[Engine, asyncio.Task[Any]]:
    """A pass whose fourth request never answers, running in the background."""
    release = asyncio.Event()

    async def hang_on_page_4(count: int) -> None:
        if count == 4:
            await release.wait()

    fake.after_page = hang_on_page_4
    engine = Engine(config, store, Metrics(), sleep=no_sleep)
    return engine, asyncio.create_task(engine.run("official"))


@BOTH_BACKENDS
class TestResume:
    async def test_cancelled_pass_resumes_from_its_last_page(
        self, config: Config, store: Store, reader: Reader, fake: FakeRegistry
    ) -> None:
        """Stopping mid-pass keeps the committed pages and the cursor; the next run goes on."""
        engine, task = start_pass_hanging_on_page_4(config, store, fake)
        while len(fake.requests) < 4:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.close()
        async with store.transaction():
            state = await store.state("official")
        # Page 4 is fetched while page 3 is written, so the stop lands after page 2 or 3.
        boundaries = {":".join(sorted(fake.rows)[i]) for i in (199, 299)}
        assert state.pass_cursor in boundaries
        assert state.pass_mode == "full"
        fake.after_page = None
        fake.requests.clear()
        engine = Engine(config, store, Metrics(), sleep=no_sleep)
        await engine.startup()
        result = await engine.run("official")
        await engine.close()
        assert result.outcome == "ok"
        assert fake.requests[0].get("cursor") == state.pass_cursor
        assert "updated_since" not in fake.requests[0]
        assert_mirrors(await served(reader), fake)
        history = await reader.passes("official")
        assert [p.outcome for p in history[:2]] == ["ok", "interrupted"]
        assert history[0].resumed_from == history[1].id


# SQLite only: its FTS5 index is deferred during a first sync, and the plan text is SQLite's
# (PostgreSQL's GIN index needs no deferral: tests/test_backends.py checks its plans).
class TestSearchIndex:
    async def test_first_sync_defers_the_index_then_builds_it_once(
        self, config: Config, store: Store, reader: Reader, fake: FakeRegistry
    ) -> None:
        """Mid-way through a first sync, search scans (and is right); a resumed, completed
        pass leaves a full-text index covering every page, before and after the stop."""
        engine, task = start_pass_hanging_on_page_4(config, store, fake)
        early = ListQuery("default", 100, search="aliengiraffe")
        while not await reader.list_servers(early):
            await asyncio.sleep(0.01)
        assert "VIRTUAL TABLE" not in " ".join(await reader.plan(early))
        assert [r[0] for r in await reader.list_servers(early)] == ["ai.aliengiraffe/spotdb"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.close()

        fake.after_page = None
        engine = Engine(config, store, Metrics(), sleep=no_sleep)
        assert (await engine.run("official")).outcome == "ok"
        await engine.close()
        late_name = max(fake.rows)[0]
        for term, name in (
            ("aliengiraffe", "ai.aliengiraffe/spotdb"),
            (late_name, late_name),
        ):
            query = ListQuery("default", 100, search=term)
            assert "VIRTUAL TABLE" in " ".join(await reader.plan(query))
            assert name in [r[0] for r in await reader.list_servers(query)]
