"""Named views in the read API (issue #13): each view a complete registry at its base path,
found per request from the configuration in force. Over a real mirror built by the real
engine, with the views' served rows written by the real curator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from sync.app import create_app
from sync.config import Config, config_from_mapping
from sync.curate.curation import Curator
from sync.metrics import Metrics
from sync.reload import reload, unsettled_views
from sync.serve.api import LIVE
from sync.store import open_store
from sync.store.sqlite.reader import SqliteReader
from tests.helpers import DEPRECATED, MULTI, served

# Two views over the one mirror, each a subset of the default view.
VIEWS = {
    "payments": ("/teams/payments", ["ai.exa/*", "com.fenetresurciel.*"]),  # 78 rows, 1 deleted
    "data": ("/teams/data/catalogue", ["io.github.a*"]),  # 106 rows
}


def views_config(path: Path, *, api: dict[str, Any] | None = None, **views: Any) -> Config:
    """A mirror at `path` with the two views (each overridable: a dict of its keys, or None
    to leave it out)."""
    entries = []
    for name, (base, include) in VIEWS.items():
        extra = views.get(name, {})
        if extra is None:
            continue
        entries.append({"name": name, "base_path": base, "filter": {"include": include}, **extra})
    return config_from_mapping(
        {
            "storage": {"path": str(path)},
            "api": api or {},
            "upstreams": [{"name": "official", "url": "http://127.0.0.1:9"}],
            "views": entries,
        }
    )


async def write_views(path: Path) -> None:
    """Both views' served rows, built from the stored entries by the curator (one reapply
    builds the default view and every configured view)."""
    config = views_config(path)
    store = await open_store(config.storage)
    try:
        await Curator(config, store, Metrics()).reapply()
    finally:
        await store.close()


@pytest.fixture(scope="session")
def views_db(tmp_path_factory: pytest.TempPathFactory, mirror_db: Path) -> Path:
    """The shared mirror with the served rows of both views; tests copy it."""
    path = tmp_path_factory.mktemp("views") / "mirror.db"
    shutil.copy(mirror_db, path)
    asyncio.run(write_views(path))
    return path


@pytest.fixture
def db(tmp_path: Path, views_db: Path) -> Path:
    path = tmp_path / "mirror.db"
    shutil.copy(views_db, path)
    return path


@pytest.fixture
async def make_client(db: Path) -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[Any, Any]] = []

    async def make(config: Config | None = None) -> TestClient[Any, Any]:
        client = TestClient(TestServer(create_app(config or views_config(db), sync=False)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def get(api: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    response = await api.get(path)
    assert response.status == status, (path, await response.text())
    return await response.json(content_type=None)


async def walk(api: TestClient[Any, Any], root: str, query: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    cursor = None
    while True:
        tail = f"&cursor={cursor}" if cursor else ""
        page = await get(api, f"{root}/servers?limit=7{query}{tail}")
        found += [(i["server"]["name"], i["server"]["version"]) for i in page["servers"]]
        cursor = page["metadata"].get("nextCursor")
        if cursor is None:
            return found


async def rows_of(db: Path, view: str) -> dict[tuple[str, str], dict[str, Any]]:
    reader = await SqliteReader.open(db)
    try:
        return await served(reader, view)
    finally:
        await reader.close()


def status_of(item: dict[str, Any]) -> str:
    status: str = item["meta"]["io.modelcontextprotocol.registry/official"]["status"]
    return status


class TestEveryViewIsARegistry:
    @pytest.mark.parametrize(("view", "base"), [(n, b) for n, (b, _) in VIEWS.items()])
    @pytest.mark.parametrize("prefix", ["/v0.1", "/v0"])
    async def test_lists_walk_exactly_the_views_rows(
        self, make_client: Callable[..., Any], db: Path, view: str, base: str, prefix: str
    ) -> None:
        api = await make_client()
        rows = await rows_of(db, view)
        visible = sorted(k for k, item in rows.items() if status_of(item) != "deleted")
        assert 0 < len(visible) < 200
        assert await walk(api, base + prefix) == visible
        assert await walk(api, base + prefix, "&include_deleted=true") == sorted(rows)
        # The default view, at the root, serves the whole mirror: more than this view.
        everything = await get(api, f"{prefix}/servers?limit=100")
        assert everything["metadata"].get("nextCursor")

    async def test_versions_latest_and_errors_under_a_base(
        self, make_client: Callable[..., Any], db: Path
    ) -> None:
        api = await make_client()
        base = "/teams/payments/v0.1"
        name = MULTI.replace("/", "%2F")
        versions = await get(api, f"{base}/servers/{name}/versions")
        assert versions["metadata"]["count"] == 71
        latest = await get(api, f"{base}/servers/{name}/versions/latest")
        assert latest["_meta"]["io.modelcontextprotocol.registry/official"]["isLatest"]
        exa = DEPRECATED[0].replace("/", "%2F")
        one = await get(api, f"{base}/servers/{exa}/versions/{DEPRECATED[1]}")
        assert one["server"]["version"] == DEPRECATED[1]
        # A name the mirror serves but this view does not: the view's 404, as problem JSON.
        data = await rows_of(db, "data")
        outside = sorted(data)[0][0].replace("/", "%2F")
        problem = await get(api, f"{base}/servers/{outside}/versions", 404)
        assert problem["detail"] == "Server not found"
        assert (await get(api, f"/v0.1/servers/{outside}/versions"))["metadata"]["count"] >= 1
        bad = await get(api, f"{base}/servers?limit=0", 422)
        assert bad["status"] == 422
        assert (await get(api, f"{base}/servers?cursor=%25%25", 400))["status"] == 400

    async def test_updated_since_follows_the_views_own_stream(
        self, make_client: Callable[..., Any], db: Path
    ) -> None:
        api = await make_client()
        rows = await rows_of(db, "data")
        stamps = sorted(
            item["meta"]["io.modelcontextprotocol.registry/official"]["updatedAt"]
            for item in rows.values()
        )
        middle = stamps[len(stamps) // 2]
        page = await walk(api, "/teams/data/catalogue/v0.1", f"&updated_since={middle}")
        expected = [
            k
            for k, item in sorted(rows.items())
            if item["meta"]["io.modelcontextprotocol.registry/official"]["updatedAt"] > middle
        ]
        assert page == expected and expected

    async def test_every_other_route_answers_under_each_base(
        self, make_client: Callable[..., Any]
    ) -> None:
        api = await make_client()
        for base in ("", "/teams/payments", "/teams/data/catalogue"):
            for prefix in ("/v0.1", "/v0"):
                assert await get(api, f"{base}{prefix}/health") == {"status": "ok"}
                assert await get(api, f"{base}{prefix}/ping") == {"pong": True}
                assert "version" in await get(api, f"{base}{prefix}/version")
                response = await api.post(f"{base}{prefix}/publish", json={})
                assert response.status == 405
                response = await api.delete(f"{base}{prefix}/servers")
                assert response.status == 405 and response.headers["Allow"]
            response = await api.get(f"{base}/openapi.yaml")
            assert response.status == 200
            assert (await response.text()).startswith("openapi:")

    @pytest.mark.parametrize(
        "path",
        [
            "/teams/v0.1/servers",  # a prefix of a base is no base
            "/teams/payments/extra/v0.1/servers",
            "/nowhere/v0/servers",
            "/nowhere/openapi.yaml",
            "/teams/payments/v0.1/nothing",
        ],
    )
    async def test_a_path_under_no_view_is_a_404_problem(
        self, make_client: Callable[..., Any], path: str
    ) -> None:
        api = await make_client()
        await get(api, "/teams/payments/v0.1/servers")  # while the view's own base answers
        response = await api.get(path)
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        assert (await response.json())["status"] == 404

    async def test_the_default_view_moves_with_api_base_path(
        self, make_client: Callable[..., Any], db: Path
    ) -> None:
        api = await make_client(views_config(db, api={"base_path": "/registry"}))
        page = await get(api, "/registry/v0.1/servers?limit=100")
        assert page["metadata"].get("nextCursor")
        await get(api, "/v0.1/servers", 404)
        await get(api, "/teams/payments/v0.1/servers")


class TestReload:
    async def test_views_added_moved_and_removed_without_a_restart(
        self, make_client: Callable[..., Any], db: Path
    ) -> None:
        app_config = views_config(db, data=None)
        api = await make_client(app_config)
        app = api.server.app
        await get(api, "/teams/data/catalogue/v0.1/servers", 404)
        payments = await get(api, "/teams/payments/v0.1/servers?limit=100")
        # Added.
        assert await reload(app, lambda: views_config(db))
        data = await get(api, "/teams/data/catalogue/v0.1/servers?limit=100")
        assert data["servers"][0]["server"]["name"].startswith("io.github.a")
        # Moved: the old base answers no more; the path now names another view, whose rows it
        # serves (the store unchanged, so only the view in the cache key tells them apart).
        moved = views_config(
            db, payments={"base_path": "/teams/data/catalogue"}, data={"base_path": "/d"}
        )
        assert await reload(app, lambda: moved)
        assert await get(api, "/teams/data/catalogue/v0.1/servers?limit=100") == payments
        assert await get(api, "/d/v0.1/servers?limit=100") == data
        await get(api, "/teams/payments/v0.1/servers", 404)
        # Removed.
        assert await reload(app, lambda: views_config(db, payments=None, data=None))
        await get(api, "/d/v0.1/servers", 404)
        assert app[LIVE].config.views == ()

    async def test_a_view_changing_rules_and_auth_together_shows_no_reader_the_old_rows(
        self, db: Path, tmp_path: Path
    ) -> None:
        """Narrowed as it opens: until the writer has re-evaluated the view, its rows are the
        old rules' and its readers the new auth's. It answers 503 in between, never a row of
        the old rules to a reader without a token."""
        tokens = tmp_path / "tokens"
        tokens.write_text("secret-token\n")
        closed = {
            "auth": {"type": "bearer", "tokens_file": str(tokens)},
            "filter": {"include": ["*"]},
        }
        before = views_config(db, payments=closed)
        after = views_config(db, payments={"filter": {"include": ["ai.exa/*"]}})
        store = await open_store(before.storage)
        try:
            await Curator(before, store, Metrics()).reapply()
        finally:
            await store.close()
        client = TestClient(TestServer(create_app(before, sync=True)))
        await client.start_server()
        try:
            path = "/teams/payments/v0.1/servers?limit=100"
            assert (await client.get(path)).status == 401
            seen: Counter[int] = Counter()
            leaked: list[str] = []

            async def poll() -> None:
                while True:
                    response = await client.get(path)
                    seen[response.status] += 1
                    if response.status == 200:
                        page = await response.json()
                        names = {item["server"]["name"] for item in page["servers"]}
                        leaked.extend(n for n in names if not n.startswith("ai.exa/"))
                    await asyncio.sleep(0)

            polling = asyncio.create_task(poll())
            assert await reload(client.server.app, lambda: after)
            polling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await polling
            assert leaked == [] and seen[503] > 0, seen
            page = await get(client, path)
            assert {item["server"]["name"] for item in page["servers"]} == {"ai.exa/exa"}
            # A reload changing the auth alone, or the rules alone, never pauses a view.
            narrowed = views_config(db, payments={**closed, "filter": {"include": ["ai.exa/*"]}})
            assert unsettled_views(before, narrowed) == frozenset()
            assert unsettled_views(before, after.model_copy()) == {"payments"}
            assert unsettled_views(narrowed, after) == frozenset()
        finally:
            await client.close()

    async def test_a_view_cannot_take_the_base_path_a_restart_would_free(
        self, make_client: Callable[..., Any], db: Path
    ) -> None:
        """`api.base_path` changes only with a restart: a reload that moves the default view
        and puts a view at its old place would leave that view shadowed. It is refused whole."""
        api = await make_client(views_config(db, api={"base_path": "/registry"}))
        app = api.server.app
        taking = views_config(db, api={"base_path": "/new"}, payments={"base_path": "/registry"})
        with capture_logs() as logs:
            assert not await reload(app, lambda: taking)
        [refused] = [e for e in logs if e["event"] == "config.reload_refused"]
        assert "views[payments].base_path" in refused["error"]
        assert app[LIVE].config.views[0].base_path == "/teams/payments"
        default = await get(api, "/registry/v0.1/servers?limit=1")
        assert default["metadata"]["count"] == 1
        await get(api, "/teams/payments/v0.1/servers?limit=1")


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(
                part.split("=", 1) for part in line[len(name) + 1 : line.index("}")].split(",")
            )
            if all(json.loads(found.get(k, "null")) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


class TestMetrics:
    async def test_requests_carry_the_view_that_answered(
        self, make_client: Callable[..., Any], db: Path
    ) -> None:
        api = await make_client()
        await get(api, "/teams/payments/v0.1/servers")
        await get(api, "/teams/payments/v0.1/servers")
        await get(api, "/v0.1/servers")
        await get(api, "/nowhere/v0.1/servers", 404)
        text = await (await api.get("/metrics")).text()
        name = "subregistry_http_requests_total"
        route = "/v0.1/servers"
        assert metric(text, name, view="payments", route=route, status="200") == 2
        assert metric(text, name, view="default", route=route, status="200") == 1
        assert metric(text, name, view="", route=route, status="404") == 1
        # Served sizes for every configured view, each its own count.
        versions = "subregistry_served_versions"
        rows = await rows_of(db, "payments")
        deleted = sum(status_of(item) == "deleted" for item in rows.values())
        assert metric(text, versions, view="payments", status="deleted") == deleted == 1
        assert metric(text, versions, view="data", status="active") == len(
            await rows_of(db, "data")
        )
        assert metric(text, "subregistry_served_servers", view="payments") == 2
