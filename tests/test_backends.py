"""The two backends side by side: one catalogue written through each Store answers every list
query identically from each Reader; and the PostgreSQL writer's leadership contract (stamps
that continue after any earlier leader's, the fence that keeps a deposed writer from
committing)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.pg import HAVE_PSYCOPG, PgServer, unavailable

if not HAVE_PSYCOPG:
    unavailable("psycopg is not installed (pip install -e '.[test]')")

import psycopg

from sync.config import StorageConfig
from sync.errors import NotLeader, SchemaTooNew, StoreError
from sync.model import OFFICIAL, Entry, ServedRow
from sync.store import ListQuery, Reader, ServedItem, open_reader, open_store
from sync.store.postgres.writer import PostgresStore
from tests.helpers import build_mirror, mirror_config, take_leadership
from tests.test_query_forms import TERMS, extra_items, matches

NAMESPACE = "io.github.mcp-subregistry"
FUTURE = "2999-01-01T00:00:00.000000Z"


# --- one catalogue, two backends -----------------------------------------------------------


class Pair:
    """The same catalogue mirrored by the real engine into SQLite and into PostgreSQL."""

    def __init__(self, sqlite: StorageConfig, postgres: StorageConfig) -> None:
        self.sqlite, self.postgres = sqlite, postgres
        self.keys: list[tuple[str, str]] = []
        self.stamps: dict[str, dict[tuple[str, str], str]] = {}


async def _export(reader: Reader) -> list[ServedItem]:
    return [row async for row in reader.export("default")]


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, catalogue: list[dict[str, Any]], pg_server: PgServer
) -> Iterator[Pair]:
    items = catalogue + extra_items(catalogue[0])
    path = tmp_path_factory.mktemp("parity") / "mirror.db"
    with pg_server.database() as dsn:
        asyncio.run(build_mirror(path, items))
        asyncio.run(build_mirror(path.with_suffix(".unused"), items, storage_url=dsn))
        built = Pair(mirror_config(path).storage, mirror_config(path, storage_url=dsn).storage)

        async def stamps() -> None:
            for name, storage in (("sqlite", built.sqlite), ("postgres", built.postgres)):
                reader = await open_reader(storage)
                try:
                    rows = await _export(reader)
                finally:
                    await reader.close()
                built.keys = [(r[0], r[1]) for r in rows]
                built.stamps[name] = {(r[0], r[1]): _updated(r[3]) for r in rows}

        asyncio.run(stamps())
        # What autovacuum does on a live server: statistics for the planner.
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("ANALYZE")
        yield built


def _updated(meta: str) -> str:
    value: str = json.loads(meta)[OFFICIAL]["updatedAt"]
    return value


def _normal(rows: list[ServedItem], stamps: dict[tuple[str, str], str]) -> list[Any]:
    """Rows with the mirror's own times (each backend stamped its rows when it wrote them)
    replaced by the row's rank in that backend's update order, and without the time the
    fake registry changed a status (each mirror was built from a fake of its own)."""
    rank = {stamp: i for i, stamp in enumerate(sorted(stamps.values()))}
    normal = []
    for name, version, server, meta in rows:
        parsed = json.loads(meta)
        parsed[OFFICIAL]["updatedAt"] = rank[parsed[OFFICIAL]["updatedAt"]]
        parsed[NAMESPACE].pop("syncedAt")
        if parsed[OFFICIAL].pop("statusChangedAt", None) is not None:
            parsed[NAMESPACE].pop("upstreamUpdatedAt")
        normal.append((name, version, server, parsed))
    return normal


# NUL, which PostgreSQL text cannot hold, in cursors and terms, beside any other character.
TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
    st.sampled_from(["\0", "ai.exa/exa\0", "3.0.7\0z", "a\0b"]),
)


@st.composite
def list_queries(draw: st.DrawFn, keys: list[tuple[str, str]]) -> tuple[ListQuery, int | None]:
    """A list query as the API builds them; the `updated_since` it carries is the stamp of
    the key at the returned rank (each backend's own stamp for that row)."""
    after: tuple[str, str | None] | None = draw(
        st.one_of(
            st.none(),
            st.sampled_from(keys),
            st.sampled_from(keys).map(lambda k: (k[0], None)),
            st.tuples(TEXT, st.one_of(st.none(), TEXT)),
        )
    )
    search = draw(st.one_of(st.none(), st.sampled_from(TERMS), TEXT))
    version = draw(
        st.one_of(st.none(), st.just("latest"), st.sampled_from(keys).map(lambda k: k[1]))
    )
    since = draw(st.one_of(st.none(), st.integers(0, len(keys) - 1)))
    query = ListQuery(
        "default",
        draw(st.integers(1, 40)),
        after=after,
        search=search or None,
        version=version,
        include_deleted=draw(st.booleans()),
    )
    return query, since


class TestParity:
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    async def test_every_list_query_has_the_same_answer(
        self, pair: Pair, data: st.DataObject
    ) -> None:
        """Order, cursors (official and bare-name), search (folded, literal `%`, `_`, `\\`,
        non-ASCII), `version`, deleted rows and `updated_since` (strictly after): the same rows
        in the same order, page after page."""
        query, since = data.draw(list_queries(pair.keys))
        # Both ways each reader can answer: sort the few rows found by time or by trigram,
        # or walk the name index and filter.
        threshold = data.draw(st.sampled_from([-1, 10**9]))
        answers = []
        for name, storage in (("sqlite", pair.sqlite), ("postgres", pair.postgres)):
            stamps = pair.stamps[name]
            updated_since = None if since is None else sorted(stamps.values())[since]
            reader: Any = await open_reader(storage, connections=1)
            reader.sort_delta_max = threshold
            if name == "sqlite":
                reader.search_sort_max = threshold
            try:
                rows = await reader.list_servers(
                    ListQuery(**{**_fields(query), "updated_since": updated_since})
                )
            finally:
                await reader.close()
            answers.append(_normal(rows, stamps))
        assert answers[0] == answers[1], query

    @pytest.mark.parametrize("term", TERMS)
    async def test_every_search_term_finds_the_same_rows(self, pair: Pair, term: str) -> None:
        """Each of the query-form suite's terms (case folding across scripts, literal `%`,
        `_`, `\\` and quotes), paged to the end on each backend."""
        found = []
        for storage in (pair.sqlite, pair.postgres):
            reader = await open_reader(storage, connections=1)
            try:
                found.append(await matches(reader, term))
            finally:
                await reader.close()
        assert found[0] == found[1], term

    async def test_whole_view_and_single_reads_agree(self, pair: Pair) -> None:
        readers = [await open_reader(s) for s in (pair.sqlite, pair.postgres)]
        try:
            exports = [
                _normal(await _export(r), pair.stamps[n])
                for r, n in zip(readers, ("sqlite", "postgres"), strict=True)
            ]
            assert exports[0] == exports[1]
            assert len(exports[0]) == len(pair.keys)
            for name in sorted({n for n, _ in pair.keys})[::25]:
                for deleted in (False, True):
                    rows = [
                        await r.versions("default", name, include_deleted=deleted) for r in readers
                    ]
                    assert [(n, v) for n, v, *_ in rows[0]] == [(n, v) for n, v, *_ in rows[1]]
                    one = [
                        await r.version("default", name, "latest", include_deleted=deleted)
                        for r in readers
                    ]
                    assert (one[0] or ())[:3] == (one[1] or ())[:3]
            counts = [await r.served_counts("default") for r in readers]
            assert counts[0] == counts[1]
            assert (await readers[0].held()) == (await readers[1].held())
            names = sorted({n for n, _ in pair.keys})[:40]
            found = [[e[1:13] for e in await r.entries_for(names)] for r in readers]
            assert [(e[0], e[1], e[2]) for e in found[0]] == [(e[0], e[1], e[2]) for e in found[1]]
            states = [await r.upstream_states() for r in readers]
            assert states[0].keys() == states[1].keys() == {"official"}
            passes = [await r.passes() for r in readers]
            assert [(p.outcome, p.counts) for p in passes[0]] == [
                (p.outcome, p.counts) for p in passes[1]
            ]
        finally:
            for r in readers:
                await r.close()


def _fields(query: ListQuery) -> dict[str, Any]:
    return {f: getattr(query, f) for f in ListQuery.__dataclass_fields__}


# --- plans on a catalogue of realistic size ------------------------------------------------

BIG = 50_000


@pytest.fixture(scope="module")
def big(pg_server: PgServer) -> Iterator[StorageConfig]:
    """A served view of 50,000 versions, with statistics, as a planner sees a live mirror
    (built once: these tests only read it)."""
    with pg_server.database() as dsn:
        storage = StorageConfig(url=dsn)
        asyncio.run(_migrated(storage))
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "INSERT INTO entries (upstream, name, version, server, status, description, "
                "digest, stored_at, first_seen_at) SELECT 'official', "
                "'io.example/server-' || lpad(g::text, 6, '0'), '1.0.' || mod(g, 7), '{}', "
                "'active', 'Tool number ' || md5(g::text), '\\x00', 'x', 'x' "
                "FROM generate_series(1, %s) g",
                (BIG,),
            )
            admin.execute(
                "INSERT INTO served (view, name, version, entry_id, upstream, status, is_latest, "
                "published_ts, updated_at, description, search_name, search_description, form, "
                "meta) SELECT 'default', name, version, id, upstream, status, 1, 0, "
                "'2025-01-01T00:00:00.' || lpad(id::text, 6, '0') || 'Z', description, "
                "lower(name), lower(description), '\\x00', '{}' FROM entries"
            )
            admin.execute("ANALYZE")
        yield storage


async def _migrated(storage: StorageConfig) -> None:
    await (await PostgresStore.open(storage)).close()


async def _plan(storage: StorageConfig, query: ListQuery) -> str:
    reader = await open_reader(storage, connections=1)
    try:
        return " | ".join(await reader.plan(query))
    finally:
        await reader.close()


class TestPlans:
    async def test_a_search_is_answered_from_the_trigram_index(self, big: StorageConfig) -> None:
        term = (
            hashlib.md5(b"4242", usedforsecurity=False).hexdigest()[:12].upper()
        )  # one row's, in another case
        plan = await _plan(big, ListQuery("default", 30, search=term))
        assert "served_search_name" in plan and "served_search_description" in plan, plan
        assert "Seq Scan" not in plan, plan
        reader = await open_reader(big, connections=1)
        try:
            rows = await reader.list_servers(ListQuery("default", 30, search=term))
        finally:
            await reader.close()
        assert [r[0] for r in rows] == ["io.example/server-004242"]

    @pytest.mark.parametrize(
        "query",
        [
            ListQuery("default", 30),
            ListQuery("default", 30, after=("io.example/server-020000", "1.0.3")),
            ListQuery("default", 30, after=("io.example/server-020000", None)),
            ListQuery("default", 30, version="latest"),
            ListQuery("default", 30, search="tool"),  # common: walk the names, stop at 31
        ],
        ids=["first", "cursor", "bare-cursor", "latest", "common-term"],
    )
    async def test_a_page_walks_the_name_index_and_stops(
        self, big: StorageConfig, query: ListQuery
    ) -> None:
        plan = await _plan(big, query)
        assert plan.startswith("Limit"), plan
        walks = ("Index Scan using served_view_name_version_key", "Index Scan using served_latest")
        assert any(index in plan for index in walks), plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan

    async def test_a_recent_updated_since_reads_the_time_index(self, big: StorageConfig) -> None:
        since = f"2025-01-01T00:00:00.{BIG - 20:06d}Z"
        plan = await _plan(big, ListQuery("default", 30, updated_since=since))
        assert "served_updated" in plan and "Seq Scan" not in plan, plan


# --- leadership: stamps and the fence --------------------------------------------------------


async def _leading(storage: StorageConfig) -> PostgresStore:
    store = await PostgresStore.open(storage)
    assert storage.url is not None
    await store.lead(await take_leadership(storage.url, store.holder), store.holder)
    return store


async def _setting(dsn: str, key: str) -> str | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT value FROM settings WHERE key = %s", (key,))
        row = await cursor.fetchone()
    return None if row is None else str(row[0])


async def _elsewhere(dsn: str, sql: str) -> None:
    """Run one statement from another process, as another replica would."""
    script = (
        "import sys, psycopg; psycopg.connect(sys.argv[1], autocommit=True).execute(sys.argv[2])"
    )
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, dsn, sql)
    assert await child.wait() == 0


TAKEOVER = (
    "UPDATE leadership SET epoch = epoch + 1, holder = 'other/1/ab', "
    "expires_at = now() + interval '1 hour'"
)


class TestLeadership:
    async def test_stamps_continue_after_a_leader_whose_clock_ran_ahead(self, pg_dsn: str) -> None:
        """A leader's stamps follow every stamp stored before it took over, by any leader:
        `updated_since` pulls downstream never miss a row at a failover."""
        storage = StorageConfig(url=pg_dsn)
        first = await _leading(storage)
        second = await PostgresStore.open(storage)  # a replica, opened before the stamp below
        try:
            await _write_row(first, "io.example/a")
            # The first leader's clock was centuries ahead: its stamp is stored.
            await _elsewhere(pg_dsn, f"UPDATE served SET updated_at = '{FUTURE}'")
            first.unlead()
            await second.lead(await take_leadership(pg_dsn, second.holder), second.holder)
            assert second.stamp() > FUTURE
            await _write_row(second, "io.example/b")
            # ... and the first, leading again later, continues after the second's.
            second.unlead()
            latest = await _max_stamp(pg_dsn)
            await first.lead(await take_leadership(pg_dsn, first.holder), first.holder)
            assert first.stamp() > latest > FUTURE
        finally:
            await first.close()
            await second.close()
        reader = await open_reader(storage, connections=1)
        try:
            newer = await reader.list_servers(ListQuery("default", 10, updated_since=FUTURE))
        finally:
            await reader.close()
        assert [r[0] for r in newer] == ["io.example/b"]

    async def test_a_deposed_writer_commits_nothing(self, pg_dsn: str) -> None:
        store = await _leading(StorageConfig(url=pg_dsn))
        try:
            await _elsewhere(pg_dsn, TAKEOVER)
            with pytest.raises(NotLeader, match="leadership lost"):
                async with store.transaction():
                    await store.set_setting("written", "yes")
            assert not store.leading
            with pytest.raises(NotLeader, match="does not lead"):
                async with store.transaction():
                    pass
        finally:
            await store.close()
        assert await _setting(pg_dsn, "written") is None

    async def test_a_transaction_in_flight_at_a_takeover_commits_nothing(self, pg_dsn: str) -> None:
        store = await _leading(StorageConfig(url=pg_dsn))
        try:
            with pytest.raises(NotLeader):  # noqa: PT012 - the takeover is inside
                async with store.transaction():
                    await store.set_setting("written", "yes")
                    await _elsewhere(pg_dsn, TAKEOVER)
        finally:
            await store.close()
        assert await _setting(pg_dsn, "written") is None

    async def test_an_expired_lease_commits_nothing(self, pg_dsn: str) -> None:
        """A leader that stalled past its lease (and was not yet replaced) cannot commit."""
        store = await _leading(StorageConfig(url=pg_dsn))
        try:
            await _elsewhere(pg_dsn, "UPDATE leadership SET expires_at = now() - interval '1 s'")
            with pytest.raises(NotLeader):
                async with store.transaction():
                    await store.set_setting("written", "yes")
        finally:
            await store.close()
        assert await _setting(pg_dsn, "written") is None

    async def test_a_commit_bumps_the_change_serial(self, pg_dsn: str) -> None:
        store = await _leading(StorageConfig(url=pg_dsn))
        try:
            serials = []
            for value in ("a", "b"):
                async with store.transaction():
                    await store.set_setting("k", value)
                serials.append(await _serial(pg_dsn))
        finally:
            await store.close()
        assert serials[1] == serials[0] + 1 and await _setting(pg_dsn, "k") == "b"


async def _max_stamp(dsn: str) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT max(updated_at) FROM served")
        row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


async def _serial(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT serial FROM leadership")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def _write_row(store: PostgresStore, name: str) -> None:
    async with store.transaction():
        entry = Entry(name, "1.0.0", "{}", None, "active", None, None, None, None, "", b"d")
        await store.upsert_entries("official", [entry], sweep=1, now="x")
        [stored] = await store.entries_for([name])
        row = ServedRow(
            name,
            "1.0.0",
            stored.id,
            "official",
            "active",
            True,
            0.0,
            "",
            b"form",
            '{"t":"{stamp}"}',
        )
        await store.write_served("default", [row], {})


# --- errors, cancellation, schema -------------------------------------------------------------


class TestFailures:
    async def test_cancellation_rolls_back_and_the_writer_goes_on(self, pg_dsn: str) -> None:
        store = await _leading(StorageConfig(url=pg_dsn))
        try:
            for body in ("waiting", "querying"):
                started = asyncio.Event()

                async def work(body: str = body, started: asyncio.Event = started) -> None:
                    async with store.transaction():
                        await store.set_setting("written", body)
                        started.set()
                        if body == "waiting":
                            await asyncio.Event().wait()
                        await store._conn.execute("SELECT pg_sleep(60)")

                task = asyncio.create_task(work())
                await started.wait()
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert await _setting(pg_dsn, "written") is None
            async with store.transaction():
                await store.set_setting("after", "yes")
        finally:
            await store.close()
        assert await _setting(pg_dsn, "after") == "yes"

    async def test_errors_are_store_errors_without_the_password(self, pg_dsn: str) -> None:
        hidden = "postgresql://someone:s3cret@127.0.0.1:1/none"
        with pytest.raises(StoreError) as caught:
            await open_store(StorageConfig(url=hidden))
        assert "s3cret" not in str(caught.value) and "someone@127.0.0.1:1" in str(caught.value)
        with pytest.raises(StoreError):
            await open_reader(StorageConfig(url=hidden))
        store = await _leading(StorageConfig(url=pg_dsn))
        try:
            with pytest.raises(StoreError, match="syntax"):
                async with store.transaction():
                    await store._conn.execute("SELEKT 1")
            assert store.where == pg_dsn
            assert await store.integrity_check() == "ok"
            await _elsewhere(pg_dsn, "DELETE FROM subregistry_migrations")
            assert "schema incomplete" in await store.integrity_check()
        finally:
            await store.close()

    async def test_a_newer_schema_is_refused_on_open(self, pg_dsn: str) -> None:
        await (await PostgresStore.open(StorageConfig(url=pg_dsn))).close()
        await _elsewhere(pg_dsn, "INSERT INTO subregistry_migrations (name) VALUES ('9999_x')")
        with pytest.raises(SchemaTooNew):
            await open_store(StorageConfig(url=pg_dsn))
        reader = await open_reader(StorageConfig(url=pg_dsn))  # reads still work
        await reader.close()


async def test_a_version_postgresql_cannot_store_is_quarantined(pg_dsn: str) -> None:
    """PostgreSQL text cannot hold NUL: free text keeps a U+FFFD in its place, and an entry
    whose key holds one is quarantined with its reason, never a failed page."""
    store = await _leading(StorageConfig(url=pg_dsn))
    good = Entry("io.x/a", "1.0.0", "{}", None, "active", "gone\0", None, None, None, "a\0b", b"1")
    bad = good._replace(name="io.x/b", version="1.0\0")
    try:
        async with store.transaction():
            counts, touched = await store.upsert_entries("official", [good, bad], sweep=1, now="t")
        async with store.transaction():
            [stored] = await store.entries_for(["io.x/a", "io.x/b"])
    finally:
        await store.close()
    assert (counts.inserted, touched) == (1, {"io.x/a"})
    assert (stored.description, stored.status_message) == ("a\ufffdb", "gone\ufffd")
    reader = await open_reader(StorageConfig(url=pg_dsn))
    try:
        [held] = await reader.quarantine("official")
    finally:
        await reader.close()
    assert held.key == "io.x/b@1.0\\u0000" and "NUL" in held.reason


async def test_every_connection_is_named_after_its_holder(pg_dsn: str) -> None:
    """A successor finds a stalled leader's backends (to terminate them) by this name."""
    storage = StorageConfig(url=pg_dsn, pool_size=2)
    store = await _leading(storage)
    reader = await open_reader(storage)
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'subregistry %%' "
                "GROUP BY 1"
            )
            named = dict(await cursor.fetchall())
    finally:
        await reader.close()
        await store.close()
    assert named == {f"subregistry {store.holder}": 3}  # the writer and the two readers
