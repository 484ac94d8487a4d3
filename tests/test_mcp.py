"""The catalogue as an MCP server (issue #14): the SDK's own client over real HTTP against a
served mirror of the real catalogue, its answers compared with the REST API's and the CLI's."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent

from sync.app import create_app
from sync.config import Config, config_from_mapping
from sync.curate.curation import Curator
from sync.metrics import Metrics
from sync.reload import reload
from sync.serve.mcp import build_server, quietly
from sync.store import open_store
from tests.cli_helpers import free_port, run, spawn
from tests.helpers import BOTH_BACKENDS, DEPRECATED, MULTI, mirror_config, serving

TOKEN = "mcp-test-token"
PAYMENTS = "/teams/payments"
SECRET = "/teams/secret"
NAMESPACE = "io.github.mcp-subregistry"  # the default `[mirror] namespace`
TOOLS = {"search_servers", "get_server", "list_versions", "why_not_served"}


def mcp_config(path: Path) -> dict[str, Any]:
    """Two views over the mirror at `path`: `payments` open, `secret` behind a bearer token."""
    tokens = path.parent / "tokens"
    tokens.write_text(TOKEN + "\n")
    return {
        "storage": {"path": str(path)},
        "upstreams": [{"name": "official", "url": "http://127.0.0.1:9"}],
        "views": [
            {
                "name": "payments",
                "base_path": PAYMENTS,
                "filter": {"include": ["ai.exa/*", "com.fenetresurciel.*"]},
            },
            {
                "name": "secret",
                "base_path": SECRET,
                "filter": {"include": ["io.github.a*"]},
                "auth": {"type": "bearer", "tokens_file": str(tokens)},
            },
        ],
    }


def mcp_toml(path: Path, extra: str = "") -> str:
    """`mcp_config` as a file for a real process."""
    lines = [f"[storage]\npath = {json.dumps(str(path))}\n{extra}"]
    lines.append('[[upstreams]]\nname = "official"\nurl = "http://127.0.0.1:9"')
    for view in mcp_config(path)["views"]:
        lines.append(f'[[views]]\nname = "{view["name"]}"\nbase_path = "{view["base_path"]}"')
        lines.append(f"[views.filter]\ninclude = {json.dumps(view['filter']['include'])}")
        if "auth" in view:
            file = json.dumps(view["auth"]["tokens_file"])
            lines.append(f'[views.auth]\ntype = "bearer"\ntokens_file = {file}')
    return "\n".join(lines) + "\n"


async def write_views(config: Config) -> None:
    store = await open_store(config.storage)
    try:
        await Curator(config, store, Metrics()).reapply()
    finally:
        await store.close()


@pytest.fixture(scope="module")
def views_db(tmp_path_factory: pytest.TempPathFactory, mirror_db: Path) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "mirror.db"
    shutil.copy(mirror_db, path)
    asyncio.run(write_views(config_from_mapping(mcp_config(path))))
    return path


@pytest.fixture
def config(tmp_path: Path, views_db: Path) -> Config:
    path = tmp_path / "mirror.db"
    shutil.copy(views_db, path)
    return config_from_mapping(mcp_config(path))


@pytest.fixture
async def base(config: Config) -> AsyncIterator[str]:
    async with serving(create_app(config, sync=False)) as url:
        yield url


@asynccontextmanager
async def client(url: str, token: str | None = None) -> AsyncIterator[Client]:
    """The SDK's high-level client (it negotiates the newest protocol it can)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as mcp,
    ):
        yield mcp


async def rest(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return json.loads(await response.read())


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def text(result: CallToolResult) -> str:
    assert isinstance(result.content[0], TextContent)
    return result.content[0].text


def listing(body: dict[str, Any]) -> dict[str, Any]:
    """A REST list as a tool gives it: no cursor (a tool answer is one page)."""
    return {"servers": body["servers"], "metadata": {"count": body["metadata"]["count"]}}


async def ranked(base: str, query: str, limit: int, token: str | None = None) -> dict[str, Any]:
    """The REST ranked search's answer as `search_servers` gives it: one page, and no score
    (the tool's items are the served form; the order is the score's)."""
    body = await rest(f"{base}/v0.1/x/{NAMESPACE}/search?q={query}&limit={limit}", token)
    for item in body["servers"]:
        del item["_meta"][NAMESPACE]["score"]
    return listing(body)


async def test_tools_are_listed_with_schemas_and_read_only_annotations(base: str) -> None:
    async with client(base + "/mcp") as mcp:
        tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and tool.title
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is True
        assert tool.annotations.idempotent_hint is True
        assert tool.annotations.open_world_hint is False
    assert tools["search_servers"].input_schema["required"] == ["query"]
    limit = tools["search_servers"].input_schema["properties"]["limit"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 10)
    assert tools["get_server"].input_schema["properties"]["version"]["default"] == "latest"
    assert set(tools["get_server"].output_schema["properties"]) == {"server", "_meta"}
    assert set(tools["list_versions"].output_schema["properties"]) == {"servers", "metadata"}


async def test_every_tool_answers_what_the_rest_api_says(base: str) -> None:
    async with client(base + "/mcp") as mcp:
        for query, limit in (("exa", 5), ("github", 100), ("mcp", 3)):
            found = await mcp.call_tool("search_servers", {"query": query, "limit": limit})
            assert not found.is_error, text(found)
            assert found.structured_content == await ranked(base, query, limit)
            assert found.structured_content["metadata"]["count"] > 0
        for name, version in ((MULTI, "latest"), (*DEPRECATED,), ("ai.exa/exa", "latest")):
            got = await mcp.call_tool("get_server", {"name": name, "version": version})
            quoted = name.replace("/", "%2F")
            assert got.structured_content == await rest(
                f"{base}/v0.1/servers/{quoted}/versions/{version}"
            )
        got = await mcp.call_tool("get_server", {"name": MULTI})  # latest by default
        assert got.structured_content["_meta"]["io.modelcontextprotocol.registry/official"][
            "isLatest"
        ]
        versions = await mcp.call_tool("list_versions", {"name": MULTI})
        expected = await rest(f"{base}/v0.1/servers/{MULTI.replace('/', '%2F')}/versions")
        assert versions.structured_content == listing(expected)
        assert versions.structured_content["metadata"]["count"] == 71  # one of 72 is deleted


def without_absent_reasons(value: Any) -> Any:
    """The tool's report as the CLI prints it: where the CLI leaves a key out (a rule's reason
    when it did not act, `in_view` in the default view), the schema's answer has it null."""
    if isinstance(value, list):
        return [without_absent_reasons(v) for v in value]
    if isinstance(value, dict):
        return {
            k: without_absent_reasons(v)
            for k, v in value.items()
            if not (v is None and (k == "in_view" or (k == "reason" and "verdict" in value)))
        }
    return value


@pytest.mark.parametrize(("path", "view"), [("", "default"), (PAYMENTS, "payments")])
async def test_why_not_served_is_the_explain_report(
    base: str, config: Config, tmp_path: Path, path: str, view: str
) -> None:
    file = tmp_path / "config.toml"
    file.write_text(mcp_toml(config.storage.path))
    async with client(f"{base}{path}/mcp") as mcp:
        for name in (MULTI, "io.github.github/github-mcp-server"):
            result = await mcp.call_tool("why_not_served", {"name": name})
            assert not result.is_error, text(result)
            code, out, err = await run("--config", file, "explain", name, "--view", view, "--json")
            assert code == 0, err
            report = json.loads(out)
            del report["served"], report["version"]
            assert without_absent_reasons(result.structured_content) == report
            assert report["upstreams"] and report["view"] == view


async def test_an_unknown_server_or_a_bad_argument_is_a_tool_error(base: str) -> None:
    async with client(base + "/mcp") as mcp:
        for tool, arguments, says in (
            ("get_server", {"name": "io.example/none"}, "io.example/none"),
            ("get_server", {"name": MULTI, "version": "9.9.9-none"}, "9.9.9-none"),
            ("list_versions", {"name": "io.example/none"}, "io.example/none"),
            ("why_not_served", {"name": "io.example/none"}, "no upstream"),
            ("search_servers", {"query": "x", "limit": 0}, "limit"),
            ("search_servers", {"query": "x", "limit": 101}, "limit"),
            ("get_server", {"name": ""}, "name"),
            ("get_server", {"name": MULTI, "version": ""}, "version"),
        ):
            result = await mcp.call_tool(tool, arguments)
            assert result.is_error, (tool, arguments)
            assert says in text(result)
        # A query that finds nothing is an answer, not an error.
        empty = await mcp.call_tool("search_servers", {"query": "no-such-server-anywhere"})
        assert not empty.is_error and empty.structured_content == {
            "servers": [],
            "metadata": {"count": 0},
        }


async def test_a_view_s_mcp_sees_only_its_rows(base: str) -> None:
    async with client(f"{base}{PAYMENTS}/mcp") as mcp:
        found = await mcp.call_tool("search_servers", {"query": "", "limit": 100})
        names = {s["server"]["name"] for s in found.structured_content["servers"]}
        assert names and all(n.startswith(("ai.exa/", "com.fenetresurciel.")) for n in names)
        expected = await rest(f"{base}{PAYMENTS}/v0.1/servers?version=latest&limit=100")
        assert found.structured_content == listing(expected)
        outside = "io.github.github/github-mcp-server"
        assert (await mcp.call_tool("get_server", {"name": outside})).is_error
        assert (await mcp.call_tool("list_versions", {"name": outside})).is_error
        # The default view serves it; this view's own rules say why it does not.
        report = (await mcp.call_tool("why_not_served", {"name": outside})).structured_content
        copies = [c for u in report["upstreams"] for c in u["versions"]]
        assert all(c["served"] and not c["in_view"]["served"] for c in copies)
    async with client(base + "/mcp") as mcp:
        assert not (await mcp.call_tool("get_server", {"name": outside})).is_error


async def test_a_bearer_view_s_mcp_needs_its_token(base: str) -> None:
    url = f"{base}{SECRET}/mcp"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession() as http:
        for token in (None, "wrong"):
            sent = {**headers, "Authorization": f"Bearer {token}"} if token else headers
            async with http.post(url, json=body, headers=sent) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith('Bearer realm="secret"')
    statuses: list[int] = []

    async def seen(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    with pytest.raises(BaseException) as refused:  # noqa: PT011 - the SDK wraps it in groups
        async with (
            httpx2.AsyncClient(event_hooks={"response": [seen]}, timeout=30) as http,
            Client(streamable_http_client(url, http_client=http)) as mcp,
        ):
            await mcp.list_tools()
    assert any(isinstance(e, MCPError) for e in leaves(refused.value)), refused.value
    assert statuses and set(statuses) == {401}
    async with client(url, TOKEN) as mcp:
        found = await mcp.call_tool("search_servers", {"query": "io.github", "limit": 50})
        expected = await ranked(f"{base}{SECRET}", "io.github", 50, TOKEN)
        assert found.structured_content == expected
        names = {s["server"]["name"] for s in found.structured_content["servers"]}
        assert names and all(n.startswith("io.github.a") for n in names)


async def test_why_not_served_in_a_view_keeps_a_protected_default_view_s_secrets(
    config: Config,
) -> None:
    """The report tells what the default view holds: an open view cannot tell it when the
    default view is behind auth (the view's own tools still answer)."""
    settings = mcp_config(config.storage.path)
    settings["api"] = {"auth": settings["views"][1]["auth"]}
    async with serving(create_app(config_from_mapping(settings), sync=False)) as base:
        async with client(f"{base}{PAYMENTS}/mcp") as mcp:
            for name in ("ai.exa/exa", "io.example/none", "io.github.github/github-mcp-server"):
                result = await mcp.call_tool("why_not_served", {"name": name})
                assert result.is_error and "default view" in text(result)
                assert name not in text(result)
            assert not (await mcp.call_tool("get_server", {"name": "ai.exa/exa"})).is_error
        async with client(base + "/mcp", TOKEN) as mcp:
            result = await mcp.call_tool("why_not_served", {"name": "ai.exa/exa"})
            assert not result.is_error and result.structured_content is not None
            assert result.structured_content["view"] == "default"


@pytest.fixture
def pg_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The shared PostgreSQL mirror for the postgres run (built outside the test's loop)."""
    return str(request.getfixturevalue("pg_mirror")) if backend == "postgres" else None


@BOTH_BACKENDS
async def test_the_tools_answer_from_either_backend(
    tmp_path: Path, mirror_db: Path, pg_url: str | None
) -> None:
    path = tmp_path / "mirror.db"
    shutil.copy(mirror_db, path)
    config = mirror_config(path, storage_url=pg_url)
    async with serving(create_app(config, sync=False)) as base, client(base + "/mcp") as mcp:
        found = await mcp.call_tool("search_servers", {"query": "exa", "limit": 20})
        assert found.structured_content == await ranked(base, "exa", 20)
        got = await mcp.call_tool("get_server", {"name": DEPRECATED[0], "version": DEPRECATED[1]})
        quoted = DEPRECATED[0].replace("/", "%2F")
        expected = await rest(f"{base}/v0.1/servers/{quoted}/versions/{DEPRECATED[1]}")
        assert got.structured_content == expected
        versions = await mcp.call_tool("list_versions", {"name": MULTI})
        expected = await rest(f"{base}/v0.1/servers/{MULTI.replace('/', '%2F')}/versions")
        assert versions.structured_content == listing(expected)
        report = await mcp.call_tool("why_not_served", {"name": MULTI})
        assert report.structured_content is not None
        copies = report.structured_content["upstreams"][0]["versions"]
        assert len(copies) == 72
        assert [c["served_status"] for c in copies].count("deleted") == 1


async def test_a_view_a_reload_adds_answers_at_its_mcp_at_once(config: Config) -> None:
    settings = mcp_config(config.storage.path)
    without = {**settings, "views": settings["views"][1:]}
    app = create_app(config_from_mapping(without), sync=False)
    async with serving(app) as base, aiohttp.ClientSession() as http:
        async with http.post(f"{base}{PAYMENTS}/mcp", json={}) as response:
            assert response.status == 404
        assert await reload(app, lambda: config_from_mapping(settings))
        async with client(f"{base}{PAYMENTS}/mcp") as mcp:
            found = await mcp.call_tool("get_server", {"name": "ai.exa/exa"})
        assert not found.is_error
        assert found.structured_content == await rest(
            f"{base}{PAYMENTS}/v0.1/servers/ai.exa%2Fexa/versions/latest"
        )


async def test_a_call_is_not_bound_by_the_api_s_body_limit_but_by_the_sdk_s(base: str) -> None:
    """The API takes 1 KiB bodies (it has no writes); a tool call is read as a stream, up to
    the SDK's own limit (64 KiB)."""
    headers = {"Accept": "application/json, text/event-stream"}

    def call(query: str) -> dict[str, Any]:
        arguments = {"name": "search_servers", "arguments": {"query": query, "limit": 1}}
        return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": arguments}

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/mcp", json=call("x" * 1500), headers=headers) as r:
            assert r.status == 200
            body = await r.json()
        # Read whole, and validated: past the query's 200 characters is a tool error.
        assert body["result"]["isError"]
        assert "at most 200 characters" in body["result"]["content"][0]["text"]
        async with http.post(f"{base}/mcp", json=call("x" * 100_000), headers=headers) as r:
            assert r.status == 413


async def test_the_handshake_era_client_works_too(base: str) -> None:
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        streamable_http_client(f"{base}{PAYMENTS}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        init = await session.initialize()
        assert init.server_info.name == "mcp-subregistry"
        result = await session.call_tool("get_server", {"name": "ai.exa/exa"})
        assert result.structured_content is not None
        assert result.structured_content["server"]["name"] == "ai.exa/exa"


async def test_mcp_only_takes_post(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for method in ("GET", "DELETE"):
            async with http.request(method, f"{base}{PAYMENTS}/mcp") as response:
                assert response.status == 405
                assert response.headers["Allow"] == "POST"
                assert (await response.json())["status"] == 405
        async with http.post(f"{base}/teams/nowhere/mcp", json={}) as response:
            assert response.status == 404


def test_building_the_mcp_server_leaves_logging_alone() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()  # as in a program that has not configured logging (yet)
    try:
        quietly(build_server)
        assert root.handlers == [] and root.level == level
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert logging.getLogger("mcp").level == logging.WARNING


async def test_a_served_daemon_with_mcp_stops_cleanly_on_sigterm(
    tmp_path: Path, views_db: Path
) -> None:
    path = tmp_path / "mirror.db"
    shutil.copy(views_db, path)
    port = free_port()
    file = tmp_path / "config.toml"
    file.write_text(mcp_toml(path, f'[api]\nport = {port}\n[logging]\nformat = "json"\n'))
    process = await spawn("--config", file, "serve", "--no-sync")
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            await asyncio.sleep(0.05)
            try:
                async with aiohttp.ClientSession() as http, http.get(base + "/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:  # not listening yet
                continue
        async with client(base + "/mcp") as mcp:
            found = await mcp.call_tool("search_servers", {"query": "exa"})
        assert found.structured_content is not None
        assert found.structured_content["metadata"]["count"] > 0
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    log = err.decode()
    assert "serve.listening" in log and "Traceback" not in log
    # Every line is the daemon's own JSON: nothing from the SDK's own logging set-up.
    assert all(json.loads(line) for line in log.splitlines() if line.strip())
