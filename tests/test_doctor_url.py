"""`subregistry doctor --url` (issue #15): a registry probed the way VS Code, GitHub's documented
requirements and ToolHive read one. The mirror's own API, served live over the real catalogue,
passes every check; a registry on a loopback port that breaks one thing fails the check for
that thing, with its reason, and nothing else."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from aiohttp import web
from aiohttp.typedefs import Handler

from sync.app import create_app
from sync.config import Config
from sync.policy.probe import CHECKS, probe
from sync.policy.report import Finding, Report
from tests.cli_helpers import free_port, run
from tests.helpers import mirror_config, serving
from tests.test_views_api import VIEWS, views_config, write_views

OFFICIAL = "io.modelcontextprotocol.registry/official"
TIMEOUT = 10.0


def findings(report: Report) -> dict[str, Finding]:
    return {f.subject: f for f in report.findings}


def failing(report: Report) -> set[str]:
    return {f.subject for f in report.findings if not f.ok}


def messages(finding: Finding) -> str:
    return " | ".join(p.message for p in finding.problems)


@asynccontextmanager
async def live(config: Config) -> AsyncIterator[str]:
    """The mirror's own API over `config`'s store, on a loopback port."""
    async with serving(create_app(config, sync=False)) as url:
        yield url


@pytest.fixture(scope="session")
def probe_views_db(tmp_path_factory: pytest.TempPathFactory, mirror_db: Path) -> Path:
    """The shared mirror of tests/data with the served rows of two named views."""
    path = tmp_path_factory.mktemp("probe-views") / "mirror.db"
    shutil.copy(mirror_db, path)
    asyncio.run(write_views(path))
    return path


@pytest.fixture
def db(tmp_path: Path, probe_views_db: Path) -> Path:
    path = tmp_path / "mirror.db"
    shutil.copy(probe_views_db, path)
    return path


class TestTheMirrorPasses:
    async def test_every_check_through_the_real_command(self, db: Path) -> None:
        async with live(views_config(db)) as url:
            code, out, err = await run("doctor", "--url", url)
            assert (code, err) == (0, ""), out
            lines = out.splitlines()
            assert lines[0] == f"{url} (prefix /v0.1)"
            assert [line.split(":")[0].split()[-1] for line in lines[1:-1]] == list(CHECKS)
            assert all(line.startswith("  ok   ") for line in lines[1:-1]), out
            assert lines[-1] == f"{len(CHECKS)}/{len(CHECKS)} checks passed"

            code, out, err = await run("doctor", "--url", url + "/", "--json")
            assert (code, err) == (0, "")
            report = json.loads(out)
            assert report["ok"] is True and report["prefix"] == "/v0.1"
            assert [f["subject"] for f in report["findings"]] == list(CHECKS)
            for finding in report["findings"]:
                assert finding["ok"] and finding["problems"] == [], finding
                assert finding["url"].startswith(url + "/") and finding["status"] in (200, 204)
                assert finding["latency_ms"] >= 0
        lookup = report["findings"][CHECKS.index("latest-lookup")]
        assert len(lookup["names"]) == 5 and {n["status"] for n in lookup["names"]} == {200}
        assert len({n["name"] for n in lookup["names"]}) == 5
        # A name's slash goes out as %2F, as encodeURIComponent writes it.
        assert all("%2F" in r["url"] for r in lookup["requests"])
        cursor = report["findings"][CHECKS.index("cursor")]
        assert len(cursor["requests"]) == 2  # base64url: raw and encoded are the same URL

    @pytest.mark.parametrize("view", sorted(VIEWS))
    async def test_a_named_views_base_path(self, db: Path, view: str) -> None:
        base = VIEWS[view][0]
        async with live(views_config(db)) as url:
            report = await probe(url + base, request_timeout=TIMEOUT)
            slashed = await probe(url + base + "/", request_timeout=TIMEOUT)
        for result in (report, slashed):
            assert failing(result) == set(), [(f.subject, f.problems) for f in result.findings]
            base_url = findings(result)["base-url"]
            assert base_url.details["url"] == f"{url}{base}/v0.1/servers?limit=1"
            assert f"path {base} kept" in base_url.summary
            # The names looked up are the view's own.
            for looked_up in findings(result)["latest-lookup"].details["names"]:
                assert any(fnmatchcase(looked_up["name"], glob) for glob in VIEWS[view][1])

    async def test_a_base_with_a_path_prefix(self, db: Path) -> None:
        config = mirror_config(db, base_path="/registry/mcp")
        async with live(config) as url:
            report = await probe(url + "/registry/mcp", request_timeout=TIMEOUT)
            # The same server's root is no registry: one failed probe, the rest not run.
            root = await probe(url, request_timeout=TIMEOUT)
        assert failing(report) == set(), [(f.subject, f.problems) for f in report.findings]
        assert findings(report)["openapi"].details["url"] == f"{url}/registry/mcp/openapi.yaml"
        assert failing(root) == set(CHECKS)
        assert "answered 404" in messages(findings(root)["version-probe"])
        for subject in CHECKS[1:]:
            finding = findings(root)[subject]
            assert finding.summary.startswith("not run")
            assert [p.code for p in finding.problems] == ["skipped"]


@dataclass(frozen=True)
class Faults:
    cors: bool = True
    v01: bool = True
    unsafe_cursor: bool = False  # `p+3/`: fine percent-encoded, broken as VS Code sends it
    redirect_latest: bool = False
    encoded_slash_routed: bool = True
    empty_description: bool = False  # on the first item
    no_meta: bool = False  # on the first item
    openapi_version: str = "1.0.0"
    html: bool = False
    huge: bool = False
    hang: bool = False
    surrogate: bool = False  # the first name, and the cursor, hold a lone surrogate


NAMES = [f"io.github.acme/server-{i:02d}" for i in range(12)]


def registry(faults: Faults) -> web.Application:
    """A small registry, right in every way `faults` does not break."""
    items: list[dict[str, Any]] = [
        {
            "server": {"name": name, "description": "Does one thing", "version": "1.0.0"},
            "_meta": {OFFICIAL: {"status": "active", "isLatest": True}},
        }
        for name in NAMES
    ]
    if faults.empty_description:
        items[0]["server"]["description"] = ""
    if faults.no_meta:
        del items[0]["_meta"]
    if faults.surrogate:
        items[0]["server"]["name"] = "ns/\ud800x"
    cursor_form = r"p\+([0-9]+)/" if faults.unsafe_cursor else r"p([0-9]+).?"

    async def servers(request: web.Request) -> web.StreamResponse:
        if faults.hang:
            await asyncio.sleep(3600)
        if faults.huge and request.query.get("limit") == "50":  # VS Code's first page
            return web.json_response({"servers": [], "pad": "x" * (9 * 2**20)})
        start = 0
        if "cursor" in request.query:
            match = re.fullmatch(cursor_form, request.query["cursor"])
            if match is None:
                return web.json_response({"title": "bad cursor"}, status=400)
            start = int(match[1])
        limit = int(request.query.get("limit", "30"))
        page = items[start : start + limit]
        metadata: dict[str, Any] = {"count": len(page)}
        if start + limit < len(items):
            form = "p+{}/" if faults.unsafe_cursor else "p{}\udc80" if faults.surrogate else "p{}"
            metadata["nextCursor"] = form.format(start + limit)
        return web.json_response({"servers": page, "metadata": metadata})

    async def latest(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name")
        if "namespace" in request.match_info:  # a router that only sees decoded slashes
            name = f"{request.match_info['namespace']}/{name}"
        found = [i for i in items if i["server"]["name"] == name]
        if not found:
            return web.json_response({"title": "Not Found"}, status=404)
        if faults.redirect_latest:
            prefix = request.path.split("/")[1]
            raise web.HTTPFound(f"/{prefix}/servers/{quote(name or '', safe='')}/versions/1.0.0")
        return web.json_response(found[0])

    async def openapi(_: web.Request) -> web.Response:
        text = (
            "openapi: 3.1.0\ninfo:\n  title: A registry\n"
            f"  version: {json.dumps(faults.openapi_version)}\n"
            "  description: Compatible with https://github.com/modelcontextprotocol/registry\n"
        )
        return web.Response(text=text, content_type="application/yaml")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if faults.html:
            return web.Response(text="<html><body>Sign in</body></html>", content_type="text/html")
        cors = {"Access-Control-Allow-Origin": "*"} if faults.cors else {}
        if request.method == "OPTIONS" and faults.cors:
            return web.Response(
                status=204,
                headers={
                    **cors,
                    "Access-Control-Allow-Methods": "GET, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type",
                },
            )
        response = await handler(request)
        response.headers.update(cors)
        return response

    app = web.Application(middlewares=[middleware])
    lookup = "{namespace}/{name}" if not faults.encoded_slash_routed else "{name:[^/]+}"
    for prefix in ("v0.1", "v0") if faults.v01 else ("v0",):
        app.router.add_get(f"/{prefix}/servers", servers)
        app.router.add_get(f"/{prefix}/servers/{lookup}/versions/latest", latest)
    app.router.add_get("/openapi.yaml", openapi)
    return app


async def probe_registry(faults: Faults, request_timeout: float = TIMEOUT) -> Report:
    async with serving(registry(faults)) as url:
        return await probe(url, request_timeout=request_timeout)


class TestABrokenRegistryFailsWhatItBreaks:
    async def test_the_unbroken_registry_passes(self) -> None:
        report = await probe_registry(Faults())
        assert failing(report) == set(), [(f.subject, f.problems) for f in report.findings]

    @pytest.mark.parametrize(
        ("faults", "broken", "reason"),
        [
            (Faults(cors=False), {"cors-preflight", "cors-get"}, "Access-Control-Allow-Origin"),
            (Faults(v01=False), {"version-probe"}, "VS Code falls back to /v0"),
            (Faults(unsafe_cursor=True), {"cursor"}, "VS Code appends it unencoded"),
            (Faults(redirect_latest=True), {"latest-lookup"}, "a redirect to"),
            (Faults(encoded_slash_routed=False), {"latest-lookup"}, "answered 404"),
            (Faults(empty_description=True), {"list-shape", "latest-lookup"}, "description"),
            (Faults(no_meta=True), {"list-shape", "latest-lookup"}, "`_meta` object"),
            (Faults(openapi_version="2025-12-01"), {"openapi"}, "'2025-12-01'"),
        ],
        ids=[
            "no-cors",
            "only-v0",
            "cursor-needs-encoding",
            "latest-redirects",
            "encoded-slash-not-routed",
            "empty-description",
            "no-meta",
            "openapi-2025-12-01",
        ],
    )
    async def test_one_fault_fails_its_checks_only(
        self, faults: Faults, broken: set[str], reason: str
    ) -> None:
        report = await probe_registry(faults)
        assert failing(report) == broken, [(f.subject, f.problems) for f in report.findings]
        for subject in broken:
            assert reason in messages(findings(report)[subject]), findings(report)[subject]

    async def test_only_v0_is_what_the_other_checks_use(self) -> None:
        report = await probe_registry(Faults(v01=False))
        assert report.context == {"prefix": "/v0"}
        assert "/v0/servers" in findings(report)["cursor"].details["url"]

    async def test_the_cursor_goes_out_raw_then_percent_encoded(self) -> None:
        cursor = findings(await probe_registry(Faults(unsafe_cursor=True)))["cursor"]
        requests = [r["url"].rsplit("cursor=", 1)[-1] for r in cursor.details["requests"][1:]]
        assert requests == ["p+1/", "p%2B1%2F"]
        text = messages(cursor)
        assert "with the raw cursor" in text and "percent-encoded cursor" not in text

    async def test_a_registry_listing_nothing_passes_with_notes(self) -> None:
        app = web.Application()
        empty = web.json_response({"servers": [], "metadata": {"count": 0}})

        async def servers(_: web.Request) -> web.Response:
            return web.Response(body=empty.body, content_type="application/json")

        async def openapi(_: web.Request) -> web.Response:
            body = "info: {version: 1.0.0, description: https://github.com/modelcontextprotocol/registry}"
            return web.Response(text=body)

        app.router.add_get("/v0.1/servers", servers)
        app.router.add_get("/openapi.yaml", openapi)
        async with serving(app) as url:
            report = await probe(url, request_timeout=TIMEOUT)
        # No CORS on this one: everything else passes, each with what it could not see.
        assert failing(report) == {"cors-preflight", "cors-get"}
        assert findings(report)["cursor"].summary == "one item only: no cursor to follow"
        assert findings(report)["latest-lookup"].summary.startswith("no servers listed")


class TestFailuresAreReportsNotTracebacks:
    async def test_an_empty_first_page_with_a_cursor(self) -> None:
        """Odd paging is judged, never a crash: page 2 has what page 1 had not."""
        item = {"server": {"name": "io.github.acme/one", "description": "d", "version": "1"}}
        app = web.Application()

        async def servers(request: web.Request) -> web.Response:
            if "cursor" in request.query:
                return web.json_response({"servers": [item], "metadata": {}})
            return web.json_response({"servers": [], "metadata": {"nextCursor": "p1"}})

        app.router.add_get("/v0.1/servers", servers)
        async with serving(app) as url:
            report = await probe(url, request_timeout=TIMEOUT)
        assert findings(report)["cursor"].ok, findings(report)["cursor"]

    async def test_a_closed_port(self) -> None:
        url = f"http://127.0.0.1:{free_port()}/registry"
        code, out, err = await run("doctor", "--url", url, "--timeout", "5")
        assert (code, err) == (1, ""), err
        assert "FAIL version-probe: failed" in out and "cannot connect" in out
        assert out.count("not run: no API prefix answered") == len(CHECKS) - 1
        assert out.endswith(f"0/{len(CHECKS)} checks passed\n")

    async def test_a_registry_answering_html(self) -> None:
        async with serving(registry(Faults(html=True))) as url:
            code, out, err = await run("doctor", "--url", url, "--json")
        assert (code, err) == (1, "")
        report = json.loads(out)
        result = {f["subject"]: f for f in report["findings"]}
        assert result["version-probe"]["ok"]  # VS Code's probe reads the status only
        for subject in ("list-shape", "cursor", "base-url"):
            assert "the body is not JSON (text/html" in result[subject]["problems"][0]["message"]
        assert "not run" in result["latest-lookup"]["problems"][0]["message"]
        assert "no `info` section" in result["openapi"]["problems"][0]["message"]

    async def test_a_body_over_the_cap(self) -> None:
        report = await probe_registry(Faults(huge=True))
        assert "over the 8 MiB cap" in messages(findings(report)["list-shape"])

    async def test_no_answer_within_the_timeout(self) -> None:
        report = await probe_registry(Faults(hang=True), request_timeout=0.5)
        assert "no answer within 0.5 s" in messages(findings(report)["version-probe"])
        assert failing(report) == set(CHECKS)

    async def test_an_untrusted_certificate(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
        async with serving(registry(Faults()), tls=context) as url:
            assert url.startswith("https://")
            report = await probe(url, request_timeout=TIMEOUT)
        assert "TLS failed" in messages(findings(report)["version-probe"])

    @pytest.mark.parametrize("url", ["ftp://example.org", "example.org/registry", "http://h/?q=1"])
    async def test_a_bad_url_is_one_line(self, url: str) -> None:
        code, out, err = await run("doctor", "--url", url)
        assert (code, out) == (1, "")
        assert err.startswith("subregistry: --url: ") and err.count("\n") == 1, err

    @pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "1e308", "300.5"])
    async def test_a_bad_timeout_is_one_line(self, seconds: str) -> None:
        code, out, err = await run("doctor", "--url", "http://127.0.0.1:9", "--timeout", seconds)
        assert (code, out) == (1, "")
        assert err.startswith("subregistry: --timeout: ") and err.count("\n") == 1, err

    async def test_the_longest_timeout_is_accepted(self) -> None:
        # Nothing listens on the discard port: the report says so, no argument error.
        code, out, err = await run("doctor", "--url", "http://127.0.0.1:9", "--timeout", "300")
        assert (code, err) == (1, ""), err
        assert "FAIL version-probe" in out


def test_checks_are_in_the_documented_order() -> None:
    assert CHECKS == (
        "version-probe",
        "base-url",
        "cors-preflight",
        "cors-get",
        "list-shape",
        "cursor",
        "latest-lookup",
        "openapi",
    )


async def test_names_and_cursors_that_are_not_valid_unicode_fail_their_check() -> None:
    # JSON may escape a lone surrogate (`"ns/\\ud800x"`): no client can put it in a URL.
    async with serving(registry(Faults(surrogate=True))) as url:
        code, out, err = await run("doctor", "--url", url)
        assert (code, err) == (1, ""), err
        lines = {line.split(":")[0].split()[-1]: line for line in out.splitlines()[1:-1]}
        assert lines["latest-lookup"].startswith("  FAIL"), out
        assert lines["cursor"].startswith("  FAIL"), out
        assert "'ns/\\ud800x' is not valid Unicode" in out
        assert "metadata.nextCursor 'p1\\udc80' is not valid Unicode" in out
        code, out, err = await run("doctor", "--url", url, "--json")
        assert (code, err) == (1, ""), err
        report = json.loads(out)
        assert {f["subject"] for f in report["findings"] if not f["ok"]} == {
            "latest-lookup",
            "cursor",
        }
