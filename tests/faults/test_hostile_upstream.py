"""A hostile or broken upstream never hangs, crashes or blinds the mirror (issue #10, 1-5, 13).

Each case runs the real engine against a real registry on a loopback port whose answers are
rewritten on the way out: cursors that go round in circles, content no decoder likes, a
listing that ends early without saying so, redirects to another origin.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from sync.app import create_app
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.pull.upstream import origin
from sync.pull.wire import parse_page
from sync.store import open_reader
from sync.store.sqlite.reader import SqliteReader
from sync.store.sqlite.writer import SqliteStore
from tests.fake_upstream import OFFICIAL, FakeRegistry
from tests.faults.conftest import check_truth
from tests.helpers import (
    BOTH_BACKENDS,
    assert_mirrors,
    latest_by_name,
    mirror_config,
    no_sleep,
    official,
    served,
)

Rewrite = Callable[[int, dict[str, str], str], str]


class Hostile(FakeRegistry):
    """The official list semantics, with each answer's body passed through `rewrite`
    (request number, query, body) and cursors of the form `loop-N` ignored."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__(items)
        self.rewrite: Rewrite | None = None

    async def list_servers(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("cursor", "").startswith("loop-"):
            query = {k: v for k, v in request.query.items() if k != "cursor"}
            request = request.clone(rel_url=request.rel_url.with_query(query))
        response = await super().list_servers(request)
        if self.rewrite is None or not isinstance(response, web.Response) or not response.text:
            return response
        body = self.rewrite(len(self.requests), dict(request.query), response.text)
        # surrogateescape: a test's lone surrogates U+DC80..U+DCFF go out as the invalid bytes.
        return web.Response(body=body.encode("utf-8", "surrogateescape"), headers=response.headers)


@pytest.fixture
def fake(catalogue: list[dict[str, Any]]) -> Hostile:
    return Hostile(json.loads(json.dumps(catalogue)))


def set_cursor(body: str, value: str) -> str:
    """Replace the page's metadata (its cursor) with raw JSON `value` for nextCursor."""
    head = body[: body.rindex(',"metadata":')]
    return f'{head},"metadata":{{"nextCursor":{value},"count":1}}}}'


async def failed_without_moving(engine: Engine, reason: str) -> None:
    """The pass failed with `reason`, was recorded and counted, and the checkpoint stayed."""
    result = await engine.run("official")
    assert result.outcome == "failed"
    assert reason in (result.error or ""), result.error
    async with engine.store.transaction():
        state = await engine.store.state("official")
    assert state.failures == 1 and reason in (state.last_error or "")
    assert state.checkpoint is None
    reader = await open_reader(engine.config.storage)
    try:
        [record] = await reader.passes("official")
    finally:
        await reader.close()
    assert record.outcome == "failed" and reason in (record.error or "")


@BOTH_BACKENDS
class TestEveryPassTerminates:
    @pytest.mark.parametrize("length", [1, 2, 5])
    async def test_a_cycle_of_any_length_fails_the_pass(
        self, engines: Any, fake: Hostile, length: int
    ) -> None:
        """Page N+1 points back at the cursor page 1 gave: never followed round again."""
        issued: list[str] = []

        def cycle(count: int, _: dict[str, str], body: str) -> str:
            cursor = json.loads(body)["metadata"]["nextCursor"]
            issued.append(cursor)
            return set_cursor(body, json.dumps(issued[0])) if count == length + 1 else body

        fake.rewrite = cycle
        engine = await engines()
        await failed_without_moving(engine, "revisits a cursor this pass already followed")
        assert len(fake.requests) == length + 1

    async def test_fresh_cursors_over_the_same_content_fail_the_pass(
        self, engines: Any, fake: Hostile
    ) -> None:
        """A cursor that is new every time but pages nothing new: bounded by what the
        distinct entries (and the entries held) can explain."""
        fake.rewrite = lambda count, _, body: set_cursor(body, f'"loop-{count}"')
        engine = await engines()
        await failed_without_moving(engine, "distinct entries")
        assert len(fake.requests) < 20

    @pytest.mark.parametrize("value", ["42", '{"at":"x"}', "[]", "true", '"\\ud800"'])
    async def test_a_cursor_that_is_not_a_string_fails_the_pass(
        self, engines: Any, fake: Hostile, value: str
    ) -> None:
        fake.rewrite = lambda count, _, body: set_cursor(body, value) if count == 2 else body
        engine = await engines()
        await failed_without_moving(engine, "malformed listing: nextCursor")
        assert len(fake.requests) == 2

    async def test_null_on_a_full_page_is_not_the_end(self, engines: Any, fake: Hostile) -> None:
        fake.rewrite = lambda count, _, body: set_cursor(body, "null") if count == 3 else body
        engine = await engines()
        await failed_without_moving(engine, "ends with a null nextCursor")

    async def test_null_on_a_short_page_is_the_end(self, engines: Any, fake: Hostile) -> None:
        """The generic registry spec's "null or empty" end, where the page is not full."""
        last = sorted(fake.rows)[-1]
        fake.rewrite = lambda _, query, body: (
            set_cursor(body, '""') if ":".join(last) in body and '"count":0' not in body else body
        )
        engine = await engines(page_size=7)
        assert (await engine.run("official")).outcome == "ok"
        await check_truth(engine, fake)

    async def test_the_circuit_counts_malformed_listings(self, engines: Any, fake: Hostile) -> None:
        fake.rewrite = lambda count, _, body: set_cursor(body, "1")
        engine = await engines(failure_threshold=2)
        for _ in range(2):
            assert (await engine.run("official")).outcome == "failed"
        assert (await engine.run("official")).outcome == "skipped"


def poison_entry(server_json: str) -> Rewrite:
    """Splice one raw entry into the first page, between two good ones."""

    def rewrite(count: int, _: dict[str, str], body: str) -> str:
        if count != 1:
            return body
        marker = '{"server":'
        second = body.index(marker, body.index(marker) + 1)
        item = '{"server":' + server_json + ',"_meta":{}},'
        return body[:second] + item + body[second:]

    return rewrite


POISONS = {
    "lone surrogate in the description": '{"name":"io.github.x/surrogate","version":"1.0.0",'
    '"description":"bad \\ud800 here"}',
    "lone surrogate in the version": '{"name":"io.github.x/surrogate-v","version":"1.\\udc00"}',
    "a 5000-digit integer": '{"name":"io.github.x/digits","version":"1.0.0","n":'
    + "7" * 5000
    + "}",
    "nesting 50000 deep": '{"name":"io.github.x/deep","version":"1.0.0","d":'
    + "[" * 50000
    + "]" * 50000
    + "}",
    "an escaped NUL": '{"name":"io.github.x/nul","version":"1.0.0","description":"a\\u0000b"}',
    "a raw NUL byte": '{"name":"io.github.x/rawnul","version":"1.0.0","description":"a\x00b"}',
    "invalid UTF-8": '{"name":"io.github.x/utf8","version":"1.0.0","description":"\udcff\udcfe"}',
}


class TestContentNeverCrashesAPass:
    @BOTH_BACKENDS
    @pytest.mark.parametrize("poison", list(POISONS), ids=list(POISONS))
    async def test_one_poison_entry_and_everything_around_it(
        self, engines: Any, fake: Hostile, poison: str
    ) -> None:
        """Stored losslessly or quarantined with its reason; the rest of the page lands."""
        fake.rewrite = poison_entry(POISONS[poison])
        engine = await engines()
        result = await engine.run("official")
        assert result.outcome == "ok", result.error
        assert await engine.store.integrity_check() == "ok"
        reader = await open_reader(engine.config.storage)
        try:
            quarantined = await reader.quarantine("official")
            mirror = await served(reader)
        finally:
            await reader.close()
        name = re.search(r'"name":"([^"]+)"', POISONS[poison])
        assert name is not None
        kept = [key for key in mirror if key[0] == name.group(1)]
        assert_mirrors({k: v for k, v in mirror.items() if k not in kept}, fake)
        if kept:  # stored: exactly the bytes sent
            assert not quarantined
            [key] = kept
            assert mirror[key]["server"] == POISONS[poison]
        else:
            [record] = quarantined
            assert record.reason and record.raw

    async def test_a_stored_surrogate_is_served_not_a_500(
        self, engines: Any, fake: Hostile, make_config: Any
    ) -> None:
        fake.rewrite = poison_entry(POISONS["lone surrogate in the description"])
        engine = await engines()
        assert (await engine.run("official")).outcome == "ok"
        client = TestClient(TestServer(create_app(engine.config, sync=False)))
        await client.start_server()
        try:
            url = "/v0.1/servers/io.github.x%2Fsurrogate/versions/1.0.0"
            response = await client.get(url)
            assert response.status == 200
            assert b"bad \\ud800 here" in await response.read()
            listed = await client.get("/v0.1/servers", params={"search": "surrogate"})
            assert listed.status == 200
        finally:
            await client.close()

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(junk=st.binary(min_size=1, max_size=64))
    async def test_any_bytes_in_an_entry(self, fake: Hostile, fake_url: str, junk: bytes) -> None:
        """Arbitrary bytes inside one entry's description: the pass ends as ok or failed, is
        recorded, and never leaves a traceback or a 'running' record."""
        text = junk.decode("utf-8", "surrogateescape").replace("\\", "").replace('"', "")
        fake.rewrite = poison_entry(
            '{"name":"io.github.x/fuzz","version":"1.0.0","description":"' + text + '"}'
        )
        fake.requests.clear()
        with tempfile.TemporaryDirectory() as folder:
            config = mirror_config(Path(folder) / "fuzz.db", fake_url)
            store = await SqliteStore.open(config.storage.path)
            engine = Engine(config, store, Metrics(), sleep=no_sleep)
            try:
                result = await engine.run("official")
                assert result.outcome in ("ok", "failed")
                reader = await SqliteReader.open(store.path)
                try:
                    assert all(p.outcome != "running" for p in await reader.passes())
                finally:
                    await reader.close()
            finally:
                await engine.close()
                await store.close()


@BOTH_BACKENDS
class TestOneBadEntryNeverBlocksTheRest:
    async def test_a_page_the_upstream_cannot_render_is_narrowed_round_the_entry(
        self, engines: Any, fake: Hostile, waits: Any
    ) -> None:
        """The upstream answers 500 for every page holding one entry: smaller pages mirror
        everything before it, and the pass fails naming where it stands, having lost
        nothing it committed."""
        keys = sorted(fake.rows)
        poison = keys[150]

        async def choke(request: web.Request) -> web.StreamResponse | None:
            cursor = request.query.get("cursor", "")
            after = tuple(cursor.split(":", 1)) if cursor else ("", "")
            window = [k for k in keys if k > after][: int(request.query["limit"])]
            if poison in window:
                return web.Response(status=500, text="render failed")
            return None

        fake.faults = [choke] * 1000
        engine = await engines(retries=1)
        result = await engine.run("official")
        assert result.outcome == "failed"
        assert f"after cursor {':'.join(keys[149])!r} cannot be read even alone" in (
            result.error or ""
        )
        reader = await open_reader(engine.config.storage)
        try:
            mirror = await served(reader)
            stored = await reader.entries_for({name for name, _ in keys})
        finally:
            await reader.close()
        assert {(e.name, e.version) for e in stored} == set(keys[:150])
        # The last name committed may have more versions past the stop: it is decided when
        # the listing moves past it, never on part of its versions.
        assert set(mirror) == {k for k in keys[:150] if k[0] < keys[149][0]}

    async def test_an_entry_too_big_for_any_page_is_quarantined_and_skipped(
        self, engines: Any, fake: Hostile
    ) -> None:
        """An entry whose page is over max_response_bytes even alone: its key and the
        cursor after it are read from the two ends of the body, the middle is dropped."""
        name, version = sorted(fake.rows)[150]
        fake.edit(name, version, description="x" * 90_000)
        engine = await engines(max_response_bytes=64 * 1024, retries=1)
        result = await engine.run("official")
        assert result.outcome == "ok", result.error
        reader = await open_reader(engine.config.storage)
        try:
            [record] = await reader.quarantine("official")
            mirror = await served(reader)
        finally:
            await reader.close()
        assert record.key == f"{name}@{version}" and "cap" in record.reason
        assert set(mirror) == set(fake.rows) - {(name, version)}


@BOTH_BACKENDS
class TestRemovalNeedsAgreement:
    async def test_a_listing_that_ends_early_withdraws_nothing(
        self, engines: Any, fake: Hostile
    ) -> None:
        """A full pass whose page 17 of 27 is stale (no cursor: it looks like the end) saw
        60 %: nothing is withdrawn; a complete pass after it clears the marks."""
        engine = await engines()
        assert (await engine.run("official")).outcome == "ok"
        reader = await open_reader(engine.config.storage)
        before = await served(reader)

        def stale(count: int, query: dict[str, str], body: str) -> str:
            head = body[: body.rindex(',"metadata":')]
            return head + ',"metadata":{"count":100}}' if count == 17 else body

        fake.requests.clear()
        fake.rewrite = stale
        truncated = await engine.run("official", full=True)
        assert truncated.outcome == "ok" and truncated.counts.removed == 0
        assert await served(reader) == before
        fake.rewrite = None
        for _ in range(2):
            again = await engine.run("official", full=True)
            assert again.outcome == "ok" and again.counts.removed == 0
        assert await served(reader) == before
        await reader.close()

    async def test_two_agreeing_listings_withdraw_and_a_return_restores_at_once(
        self, engines: Any, fake: Hostile
    ) -> None:
        engine = await engines()
        await engine.run("official")
        key = sorted(fake.rows)[500]
        row = fake.rows.pop(key)
        reader = await open_reader(engine.config.storage)
        try:
            await engine.run("official", full=True)
            assert official((await served(reader))[key])["status"] == "active"
            second = await engine.run("official", full=True)
            assert second.counts.removed == 1
            assert official((await served(reader))[key])["status"] == "deleted"
            fake.rows[key] = row
            row.official["updatedAt"] = "2099-01-01T00:00:00Z"
            assert (await engine.run("official")).mode == "incremental"
            assert official((await served(reader))[key])["status"] == "active"
        finally:
            await reader.close()


class TestCredentialsStayWithTheirOrigin:
    @pytest.fixture
    async def listener(self, fake: Hostile) -> Any:
        """A second origin that records every request and serves the same listing."""
        seen: list[dict[str, str]] = []
        other = Hostile([])
        other.rows = fake.rows

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            seen.append(dict(request.headers))
            response: web.StreamResponse = await handler(request)
            return response

        app = other.app()
        app.middlewares.append(record)
        server = TestServer(app)
        await server.start_server()
        yield server, seen
        await server.close()

    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
    async def test_another_origin_is_refused_by_default(
        self, engines: Any, fake: Hostile, listener: Any, host: str
    ) -> None:
        server, seen = listener
        fake.redirect(f"http://{host}:{server.port}/v0.1/servers?limit=100")
        engine = await engines(headers={"Authorization": "Bearer s3cret"})
        result = await engine.run("official")
        assert result.outcome == "failed" and "another origin" in (result.error or "")
        assert seen == []

    async def test_followed_without_the_credentials(
        self, engines: Any, fake: Hostile, listener: Any
    ) -> None:
        server, seen = listener

        async def elsewhere(request: web.Request) -> web.StreamResponse:
            raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{server.port}{request.path_qs}")

        fake.faults = [elsewhere] * 1000
        engine = await engines(headers={"Authorization": "Bearer s3cret"}, follow_redirects=True)
        assert (await engine.run("official")).outcome == "ok"
        assert fake.requests and len(seen) == len(fake.requests)
        assert seen and all("Authorization" not in h for h in seen)
        assert all("s3cret" not in json.dumps(h) for h in seen)
        assert_mirrors(await _served(engine), fake)

    def test_origin_is_scheme_host_and_port(self) -> None:
        base = origin(URL("https://registry.example.com/v0.1"))
        for other in (
            "http://registry.example.com/v0.1",
            "https://registry.example.com:8443/v0.1",
            "https://evil.example.com/v0.1",
        ):
            assert origin(URL(other)) != base
        assert origin(URL("https://registry.example.com:443/x?y")) == base


async def _served(engine: Engine) -> dict[tuple[str, str], dict[str, Any]]:
    reader = await open_reader(engine.config.storage)
    try:
        return await served(reader)
    finally:
        await reader.close()


class TestNoHalfEvaluatedServer:
    @pytest.mark.parametrize("page_size", [7, 100])
    async def test_a_fresh_curated_mirror_serves_no_false_tombstone(
        self, engines: Any, fake: Hostile, make_config: Any, page_size: int
    ) -> None:
        """latest_versions and isLatest look at every version of a name; versions that
        straddle a page boundary are decided only once all have arrived."""
        engine = await engines(page_size=page_size)
        curated = make_config(
            {"name": "official", "url": engine.config.upstreams[0].url, "page_size": page_size},
            filter={"latest_versions": 3},
        )
        engine = Engine(curated, engine.store, engine.metrics)
        try:
            assert (await engine.run("official")).outcome == "ok"
            mirror = await _served(engine)
        finally:
            await engine.close()
        false = [
            key
            for key, item in mirror.items()
            if official(item)["status"] == "deleted"
            and fake.rows[key].official["status"] != "deleted"
        ]
        assert false == []
        assert all(len(v) == 1 for v in latest_by_name(mirror).values())
        by_name: dict[str, int] = {}
        for name, _ in mirror:
            by_name[name] = by_name.get(name, 0) + 1
        assert max(by_name.values()) == 3
        assert OFFICIAL in next(iter(mirror.values()))["meta"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ("name", "version", "description", "status", "_meta", "packages", "remotes")


class TestAnyValueInAnyField:
    @settings(max_examples=300, deadline=None)
    @given(field=st.sampled_from(FIELDS), value=JSON, where=st.sampled_from(["server", "meta"]))
    def test_the_page_parses_and_the_neighbours_survive(
        self, field: str, value: Any, where: str
    ) -> None:
        """Any JSON value in any field of one entry, or of its official `_meta`: the parser
        keeps or rejects that entry and never fails the page."""
        server: dict[str, Any] = {"name": "io.github.x/odd", "version": "1.0.0"}
        meta: dict[str, Any] = {OFFICIAL: {"status": "active"}}
        (server if where == "server" else meta[OFFICIAL])[field] = value
        odd = {"server": server, "_meta": meta}
        good = [{"server": {"name": f"io.github.x/ok{i}", "version": "1"}} for i in range(2)]
        page = parse_page(json.dumps({"servers": [good[0], odd, good[1]]}))
        names = [e.name for e in page.entries]
        assert names[0] == "io.github.x/ok0" and names[-1] == "io.github.x/ok1"
        assert len(page.entries) + len(page.rejected) == 3
