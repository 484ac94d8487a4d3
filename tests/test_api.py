"""The read API, in-process, over a real mirror built by the real engine from the shared data."""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from sync.app import create_app
from sync.store import ListQuery
from sync.store.sqlite.reader import SqliteReader
from tests.fake_upstream import OFFICIAL
from tests.helpers import BOTH_BACKENDS, DEPRECATED, MULTI, mirror_config

BUILD = ("com.redpanda/docs-mcp", "2025.11.13+pr147-5d1f8b0")  # build metadata


@pytest.fixture
def make_client(
    tmp_path: Path, mirror_db: Path, backend: str, request: pytest.FixtureRequest
) -> Callable[..., Any]:
    """A client of the API over the shared mirror: a copy of the SQLite file, or the shared
    PostgreSQL mirror (for the classes that run on both backends)."""
    pg_url = request.getfixturevalue("pg_mirror") if backend == "postgres" else None

    async def make(**api: Any) -> TestClient[Any, Any]:
        path = tmp_path / "mirror.db"
        if pg_url is None and not path.exists():
            shutil.copy(mirror_db, path)
        config = mirror_config(path, storage_url=pg_url, **api)
        client = TestClient(TestServer(create_app(config, sync=False)))
        await client.start_server()
        return client

    return make


@pytest.fixture
async def api(make_client: Callable[..., Any]) -> AsyncIterator[TestClient[Any, Any]]:
    client = await make_client()
    try:
        yield client
    finally:
        await client.close()


async def get_json(api: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    response = await api.get(path)
    assert response.status == status, await response.text()
    return await response.json(content_type=None)


async def walk(api: TestClient[Any, Any], query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await get_json(
            api, f"/v0.1/servers?{query}" + (f"&cursor={cursor}" if cursor else "")
        )
        items += page["servers"]
        assert page["metadata"]["count"] == len(page["servers"])
        cursor = page["metadata"].get("nextCursor")
        if cursor is None:
            return items


def keys(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(i["server"]["name"], i["server"]["version"]) for i in items]


@BOTH_BACKENDS
class TestList:
    async def test_default_page(self, api: TestClient[Any, Any]) -> None:
        page = await get_json(api, "/v0.1/servers")
        assert page["metadata"]["count"] == 30 and len(page["servers"]) == 30
        assert re.fullmatch(r"[A-Za-z0-9_-]+", page["metadata"]["nextCursor"])
        for item in page["servers"]:
            facts = item["_meta"][OFFICIAL]
            assert facts["publishedAt"] and isinstance(facts["isLatest"], bool)
            assert item["_meta"]["io.github.mcp-subregistry"]["upstream"] == "official"
        assert keys(page["servers"]) == sorted(keys(page["servers"]))

    async def test_walking_every_page_returns_each_visible_version_once(
        self, api: TestClient[Any, Any]
    ) -> None:
        items = await walk(api, "limit=100")
        assert len(items) == 2627 and len(set(keys(items))) == 2627
        assert keys(items) == sorted(keys(items))
        assert all(i["_meta"][OFFICIAL]["status"] != "deleted" for i in items)
        with_deleted = await walk(api, "limit=100&include_deleted=true")
        assert len(with_deleted) == 2628

    async def test_no_cursor_when_the_last_page_is_exactly_full(
        self, api: TestClient[Any, Any]
    ) -> None:
        page = await get_json(api, f"/v0.1/servers?search={MULTI}&limit=71")
        assert page["metadata"] == {"count": 71}

    async def test_cursor_means_after_this_position_whatever_the_filters(
        self, api: TestClient[Any, Any]
    ) -> None:
        """VS Code drops `search` from page 2 on; the cursor must still mean a position."""
        first = await get_json(api, "/v0.1/servers?search=github&limit=5&version=latest")
        cursor = first["metadata"]["nextCursor"]
        after = await get_json(api, f"/v0.1/servers?limit=5&cursor={cursor}")
        last = keys(first["servers"])[-1]
        assert all(k > last for k in keys(after["servers"]))
        everything = await walk(api, "limit=100")
        position = keys(everything).index(last)
        assert keys(after["servers"]) == keys(everything)[position + 1 : position + 6]

    @pytest.mark.parametrize("cursor", ["%%%", "bm90LWEtY3Vyc29y", "a b", "ü", "Zm9v:YmFy"])
    async def test_malformed_cursor_is_400(self, api: TestClient[Any, Any], cursor: str) -> None:
        response = await api.get("/v0.1/servers", params={"cursor": cursor})
        assert response.status == 400
        assert response.content_type == "application/problem+json"
        body = await response.json(content_type=None)
        assert body["title"] == "Bad Request" and "cursor" in body["detail"]

    @pytest.mark.parametrize("value", ["0", "101", "-1", "ten", "1.5", "1_0", "%205", "%D9%A5"])
    async def test_limit_outside_1_to_100_is_422(
        self, api: TestClient[Any, Any], value: str
    ) -> None:
        body = await get_json(api, f"/v0.1/servers?limit={value}", 422)
        assert body["status"] == 422 and "limit" in body["detail"]

    async def test_unknown_parameters_are_ignored(self, api: TestClient[Any, Any]) -> None:
        plain = await get_json(api, "/v0.1/servers?limit=3")
        assert await get_json(api, "/v0.1/servers?limit=3&colour=blue&page=9") == plain

    async def test_limit_bounds(self, api: TestClient[Any, Any]) -> None:
        assert (await get_json(api, "/v0.1/servers?limit=1"))["metadata"]["count"] == 1
        assert (await get_json(api, "/v0.1/servers?limit=100"))["metadata"]["count"] == 100

    async def test_include_deleted_must_be_boolean(self, api: TestClient[Any, Any]) -> None:
        await get_json(api, "/v0.1/servers?include_deleted=maybe", 422)
        await get_json(api, "/v0.1/servers?include_deleted=True", 200)

    async def test_search_is_a_case_insensitive_literal_substring(
        self, api: TestClient[Any, Any]
    ) -> None:
        upper = await walk(api, "search=HOMEASSISTANT&limit=100")
        lower = await walk(api, "search=homeassistant&limit=100")
        assert upper == lower and len(upper) > 50
        assert all(
            "homeassistant" in (i["server"]["name"] + i["server"].get("description", "")).lower()
            for i in upper
        )
        for term in ["%", "_", "'", '"', "' OR 1=1 --", "\\"]:
            found = await walk(api, f"search={term.replace('%', '%25')}&limit=100")
            assert all(
                term.lower()
                in (i["server"]["name"] + " " + i["server"].get("description", "")).lower()
                for i in found
            ), term

    async def test_search_matches_descriptions_too(self, api: TestClient[Any, Any]) -> None:
        found = await walk(api, "search=Ephemeral%20data%20sandbox&limit=100")
        assert keys(found) == [("ai.aliengiraffe/spotdb", "0.1.0")]

    async def test_version_latest_and_exact(self, api: TestClient[Any, Any]) -> None:
        latest = await walk(api, "version=latest&limit=100")
        names = [k[0] for k in keys(latest)]
        assert len(names) == len(set(names)) == 1055
        assert all(i["_meta"][OFFICIAL]["isLatest"] for i in latest)
        exact = await walk(api, "version=1.0.0&limit=100")
        assert exact and all(v == "1.0.0" for _, v in keys(exact))


@BOTH_BACKENDS
class TestUpdatedSince:
    async def test_strictly_after_and_includes_deleted(self, api: TestClient[Any, Any]) -> None:
        everything = await walk(api, "limit=100&include_deleted=true")
        stamps = sorted(i["_meta"][OFFICIAL]["updatedAt"] for i in everything)
        pivot = stamps[-10]
        newer = await walk(api, f"updated_since={pivot}&limit=100")
        assert len(newer) == 9
        assert all(i["_meta"][OFFICIAL]["updatedAt"] > pivot for i in newer)

    async def test_javascript_iso_string_unencoded(self, api: TestClient[Any, Any]) -> None:
        page = await get_json(api, "/v0.1/servers?updated_since=2020-01-01T00:00:00.000Z")
        assert page["metadata"]["count"] == 30

    async def test_offsets_encoded_or_not(self, api: TestClient[Any, Any]) -> None:
        for since in ("2020-01-01T01:00:00%2B01:00", "2020-01-01T01:00:00+01:00"):
            assert (await get_json(api, f"/v0.1/servers?updated_since={since}"))["servers"]

    @pytest.mark.parametrize("since", ["yesterday", "2025-01-01", "2025-01-01T00:00:00"])
    async def test_bad_timestamp_is_400(self, api: TestClient[Any, Any], since: str) -> None:
        body = await get_json(api, f"/v0.1/servers?updated_since={since}", 400)
        assert "updated_since" in body["detail"]

    async def test_include_deleted_false_conflicts(self, api: TestClient[Any, Any]) -> None:
        body = await get_json(
            api, "/v0.1/servers?updated_since=2020-01-01T00:00:00Z&include_deleted=false", 400
        )
        assert "include_deleted=false" in body["detail"]


@BOTH_BACKENDS
class TestVersions:
    async def test_every_version_newest_first(self, api: TestClient[Any, Any]) -> None:
        body = await get_json(api, f"/v0.1/servers/{MULTI.replace('/', '%2F')}/versions")
        published = [i["_meta"][OFFICIAL]["publishedAt"] for i in body["servers"]]
        assert len(published) == 71 and body["metadata"] == {"count": 71}
        assert published == sorted(published, reverse=True)
        deleted = await get_json(
            api, f"/v0.1/servers/{MULTI.replace('/', '%2F')}/versions?include_deleted=true"
        )
        assert deleted["metadata"]["count"] == 72

    async def test_unknown_and_case_sensitive_names_404(self, api: TestClient[Any, Any]) -> None:
        body = await get_json(api, "/v0.1/servers/io.github.nobody%2Fnothing/versions", 404)
        assert body == {"title": "Not Found", "status": 404, "detail": "Server not found"}
        await get_json(api, "/v0.1/servers/AI.EXA%2FEXA/versions", 404)

    async def test_unencoded_slash_is_not_a_route(self, api: TestClient[Any, Any]) -> None:
        await get_json(api, "/v0.1/servers/ai.exa/exa/versions", 404)

    async def test_one_version_latest_and_build_metadata(self, api: TestClient[Any, Any]) -> None:
        latest = await get_json(api, f"/v0.1/servers/{MULTI.replace('/', '%2F')}/versions/latest")
        assert latest["_meta"][OFFICIAL]["isLatest"] is True and "servers" not in latest
        name, version = BUILD[0].replace("/", "%2F"), BUILD[1]
        for encoded in (version.replace("+", "%2B"), version):
            item = await get_json(api, f"/v0.1/servers/{name}/versions/{encoded}")
            assert item["server"]["version"] == version

    async def test_deleted_is_404_unless_asked(self, api: TestClient[Any, Any]) -> None:
        body = await get_json(
            api, f"/v0.1/servers/{MULTI.replace('/', '%2F')}/versions?include_deleted=true"
        )
        deleted = [i for i in body["servers"] if i["_meta"][OFFICIAL]["status"] == "deleted"]
        version = deleted[0]["server"]["version"]
        path = f"/v0.1/servers/{MULTI.replace('/', '%2F')}/versions/{version}"
        await get_json(api, path, 404)
        assert (await get_json(api, path + "?include_deleted=true"))["server"]["version"] == version

    async def test_deprecated_is_served_with_its_message(self, api: TestClient[Any, Any]) -> None:
        name, version = DEPRECATED
        item = await get_json(api, f"/v0.1/servers/{name.replace('/', '%2F')}/versions/{version}")
        assert item["_meta"][OFFICIAL]["status"] == "deprecated"
        assert item["_meta"][OFFICIAL]["statusMessage"] == "superseded"


@BOTH_BACKENDS
class TestProtocol:
    @pytest.mark.parametrize(
        "path",
        [
            "/servers?limit=3",
            f"/servers/{MULTI.replace('/', '%2F')}/versions",
            "/health",
            "/ping",
            "/version",
        ],
    )
    async def test_v0_and_v01_are_identical(self, api: TestClient[Any, Any], path: str) -> None:
        assert await get_json(api, "/v0" + path) == await get_json(api, "/v0.1" + path)

    async def test_ops_endpoints(self, api: TestClient[Any, Any]) -> None:
        assert await get_json(api, "/v0.1/health") == {"status": "ok"}
        assert await get_json(api, "/v0.1/ping") == {"pong": True}
        assert set(await get_json(api, "/v0.1/version")) == {"version", "git_commit", "build_time"}

    async def test_openapi_passes_toolhive_check(self, api: TestClient[Any, Any]) -> None:
        response = await api.get("/openapi.yaml")
        spec = yaml.safe_load(await response.text())
        assert spec["info"]["version"] == "1.0.0"
        assert "https://github.com/modelcontextprotocol/registry" in spec["info"]["description"]
        assert "/v0.1/servers" in spec["paths"] and "/v0/servers" in spec["paths"]

    async def test_unknown_route_is_problem_404(self, api: TestClient[Any, Any]) -> None:
        response = await api.get("/v0.1/nothing")
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        assert (await response.json(content_type=None))["title"] == "Not Found"

    @pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
    async def test_writes_are_405(self, api: TestClient[Any, Any], method: str) -> None:
        for path in ("/v0.1/servers", "/v0/publish", "/v0.1/servers/a%2Fb/versions/1"):
            response = await api.request(method, path)
            assert response.status == 405, path
            assert response.content_type == "application/problem+json"

    async def test_nul_bytes_are_400(self, api: TestClient[Any, Any]) -> None:
        await get_json(api, "/v0.1/servers/a%00b/versions", 400)
        await get_json(api, "/v0.1/servers?search=a%00b", 400)

    async def test_trailing_slash_redirects_on_this_host(self, api: TestClient[Any, Any]) -> None:
        response = await api.get("/v0.1/servers/?limit=2", allow_redirects=False)
        assert response.status == 308
        assert response.headers["Location"] == "/v0.1/servers?limit=2"
        root = str(api.make_url("/")).rstrip("/")
        response = await api.session.get(f"{root}//evil.com/", allow_redirects=False)
        assert response.status == 308
        assert response.headers["Location"] == "/evil.com"

    async def test_cors(self, api: TestClient[Any, Any]) -> None:
        response = await api.get("/v0.1/servers?limit=1")
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        preflight = await api.options(
            "/v0.1/servers",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-client",
            },
        )
        assert preflight.status == 204
        assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Allow-Headers"] == "x-client"

    async def test_etag_and_gzip(self, api: TestClient[Any, Any]) -> None:
        first = await api.get("/v0.1/servers?limit=50", headers={"Accept-Encoding": "gzip"})
        assert first.headers["Content-Encoding"] == "gzip"
        etag = first.headers["ETag"]
        again = await api.get("/v0.1/servers?limit=50", headers={"If-None-Match": etag})
        assert again.status == 304
        raw = await api.get(
            "/v0.1/servers?limit=50", headers={"Accept-Encoding": "identity"}, auto_decompress=False
        )
        assert "Content-Encoding" not in raw.headers
        assert (await first.json())["metadata"]["count"] == 50
        assert len(gzip.compress(await raw.read())) < len(await raw.read())

    async def test_base_path(self, make_client: Callable[..., Any]) -> None:
        client = await make_client(base_path="/registry")
        try:
            assert (await get_json(client, "/registry/v0.1/servers?limit=1"))["servers"]
            assert (await client.get("/registry/openapi.yaml")).status == 200
            await get_json(client, "/v0.1/servers", 404)
        finally:
            await client.close()


class TestIndexes:
    @pytest.mark.parametrize(
        ("query", "index"),
        [
            ({}, "sqlite_autoindex_served_1"),
            ({"after": ("io.github.a/b", "1.0.0")}, "sqlite_autoindex_served_1"),
            ({"version": "latest"}, "served_latest"),
            ({"version": "1.0.0"}, "served_version"),
            ({"include_deleted": True, "after": ("m", "")}, "sqlite_autoindex_served_1"),
            ({"updated_since": "2026-11-01T00:00:00.000000Z"}, "sqlite_autoindex_served_1"),
            ({"updated_since": "2099-01-01T00:00:00.000000Z"}, "served_updated"),
        ],
    )
    async def test_list_queries_use_indexes(
        self, mirror_db: Path, query: dict[str, Any], index: str
    ) -> None:
        """Every list query walks an index; only a small updated_since delta is sorted."""
        reader = await SqliteReader.open(mirror_db, connections=1)
        reader.sort_delta_max = 1000  # the 2,628 rows since 2026-11-01 are then "many"
        try:
            plan = " | ".join(await reader.plan(ListQuery("default", 30, **query)))
        finally:
            await reader.close()
        assert f"s USING INDEX {index}" in plan, plan
        if index != "served_updated":
            assert "TEMP B-TREE" not in plan, plan

    @pytest.mark.parametrize(
        "term",
        ["homeassistant", "SPOTDB", "Ephemeral data", "' OR 1=1 --", 'say "hi"', "ha", "mcp"],
    )
    async def test_search_paths_agree(self, mirror_db: Path, term: str) -> None:
        """The trigram index (rare terms) and the index-ordered scan (short or common terms)
        return the same pages; the plan shows which one ran."""
        reader = await SqliteReader.open(mirror_db, connections=1)
        try:
            query = ListQuery("default", 100, search=term)
            reader.search_sort_max = 10**6
            indexed = await reader.list_servers(query)
            indexed_plan = " | ".join(await reader.plan(query))
            reader.search_sort_max = 0
            scanned = await reader.list_servers(query)
            scanned_plan = " | ".join(await reader.plan(query))
        finally:
            await reader.close()
        assert [r[:2] for r in indexed] == [r[:2] for r in scanned]
        if scanned or len(term) < 3:  # a term nothing contains is answered by the index
            assert "USING INDEX sqlite_autoindex_served_1" in scanned_plan
        if len(term) >= 3:
            assert "VIRTUAL TABLE" in indexed_plan, indexed_plan
