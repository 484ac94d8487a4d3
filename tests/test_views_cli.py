"""The commands know views (issue #13): `status` reports every view, `explain --view` and
`export --view` answer for one, an unknown view is one line and exit 2; and the shipped
configuration files that document views and authentication load as written."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from sync.config import AuthConfig, ViewConfig, load_config
from sync.metrics import Metrics
from tests.cli_helpers import TOKEN, run, write_config
from tests.fake_upstream import OFFICIAL, FakeRegistry
from tests.helpers import serving

CONFIG = Path(__file__).parent.parent / "config"
PAYMENTS = ("ai.exa/*", "ai.mcpcap/*")  # 18 of the first 300 versions
VIEW_TOKENS = ("payments-token-one", "payments-token-two")
VIEWS = f"""
[[views]]
name = "payments"
base_path = "/teams/payments"
description = "what the payments org may use"
[views.filter]
include = {json.dumps(list(PAYMENTS))}
[views.auth]
type = "bearer"
tokens_file = "payments.tokens"

[[views]]
name = "data-platform"
base_path = "/teams/data"
[views.filter]
exclude = ["ai.smithery/*"]
[views.auth]
type = "oidc"
issuer = "https://idp.example.com/realms/corp"
audience = "mcp-registry"
required_claims = {{ groups = ["data-platform"] }}
"""
NAMES = "default, payments, data-platform"


@dataclass
class Mirror:
    config: Path
    fake: FakeRegistry

    def default_keys(self) -> set[tuple[str, str]]:
        return set(self.fake.rows)

    def keys(self, *globs: str) -> set[tuple[str, str]]:
        return {k for k in self.fake.rows if any(fnmatch.fnmatchcase(k[0], g) for g in globs)}


def _views_config(tmp_path: Path, url: str) -> Path:
    (tmp_path / "payments.tokens").write_text("# one per line\n" + "\n".join(VIEW_TOKENS) + "\n")
    return write_config(tmp_path, url, VIEWS)


@pytest.fixture
async def mirror(tmp_path: Path, catalogue: list[dict[str, Any]]) -> AsyncIterator[Mirror]:
    """300 upstream versions synced by a real `subregistry sync`, served by three views."""
    fake = FakeRegistry(json.loads(json.dumps(catalogue[:300])))
    async with serving(fake.app()) as url:
        config = _views_config(tmp_path, url)
        code, _, err = await run("--config", config, "sync")
        assert code == 0, err
        yield Mirror(config, fake)


def _exported(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    envelope = json.loads(text)
    assert envelope["metadata"] == {"count": len(envelope["servers"])}
    return {(s["server"]["name"], s["server"]["version"]): s for s in envelope["servers"]}


class TestUnknownView:
    @pytest.mark.parametrize(
        "args",
        [
            ("explain", "ai.exa/exa", "--view", "nope"),
            ("explain", "ai.exa/exa", "3.0.7", "--json", "--view", "nope"),
            ("export", "--view", "nope"),
            ("export", "--output", "out.json", "--view", "nope"),
        ],
    )
    async def test_one_line_naming_the_configured_views_and_exit_2(
        self, tmp_path: Path, args: tuple[str, ...]
    ) -> None:
        config = _views_config(tmp_path, "http://127.0.0.1:9")
        code, out, err = await run("--config", config, *args)
        assert (code, out) == (2, "")
        assert err == f"subregistry: no view named 'nope' (configured: {NAMES})\n"
        # It fails before anything is opened: no output file, no store.
        assert not (tmp_path / "out.json").exists() and not (tmp_path / "mirror.db").exists()

    async def test_without_views_the_default_is_the_only_one(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "http://127.0.0.1:9")
        code, _, err = await run("--config", config, "export", "--view", "payments")
        assert code == 2
        assert err == "subregistry: no view named 'payments' (configured: default)\n"


class TestStatus:
    async def test_every_view_with_its_base_path_auth_and_counts(self, mirror: Mirror) -> None:
        code, out, err = await run("--config", mirror.config, "status", "--json")
        assert code == 0, err
        report = json.loads(out)
        views = {v["name"]: v for v in report["views"]}
        assert [v["name"] for v in report["views"]] == ["default", "payments", "data-platform"]
        assert views["default"]["base_path"] == "" and views["default"]["auth"] == {"type": "none"}
        assert views["payments"]["base_path"] == "/teams/payments"
        assert views["payments"]["description"] == "what the payments org may use"
        assert views["payments"]["auth"] == {"type": "bearer", "tokens": 2}
        assert views["data-platform"]["auth"] == {
            "type": "oidc",
            "issuer": "https://idp.example.com/realms/corp",
            "audience": "mcp-registry",
            "required_claims": {"groups": ["data-platform"]},
        }
        # The top-level counts stay the default view's, as scripts read them before views.
        assert report["served"] == views["default"]["served"]
        assert report["rule_hits"] == views["default"]["rule_hits"]
        assert views["default"]["served"]["versions"] == {"active": 300}

        code, text, err = await run("--config", mirror.config, "status")
        assert code == 0, err
        lines = text.splitlines()
        at = lines.index("views:")
        assert lines[at + 1].startswith("  default at / (auth: none): 300 versions (300 active)")
        assert lines[at + 2].startswith("  payments at /teams/payments (auth: bearer, 2 tokens): ")
        assert lines[at + 3].startswith(
            "  data-platform at /teams/data (auth: oidc, issuer "
            "https://idp.example.com/realms/corp, audience mcp-registry, "
            "groups in ['data-platform']): "
        )
        for token in (*VIEW_TOKENS, TOKEN):
            assert token not in out + text

    async def test_each_view_counts_what_it_serves_and_its_rule_hits(self, mirror: Mirror) -> None:
        code, out, err = await run("--config", mirror.config, "status", "--json")
        assert code == 0, err
        views = {v["name"]: v for v in json.loads(out)["views"]}
        payments = mirror.keys(*PAYMENTS)
        data = mirror.default_keys() - mirror.keys("ai.smithery/*")
        for name, keys in (("payments", payments), ("data-platform", data)):
            served = views[name]["served"]
            assert served == {
                "versions": {"active": len(keys)},
                "servers": len({n for n, _ in keys}),
            }, name
        hits = views["payments"]["rule_hits"]
        assert hits == {"views.payments.filter.include": 300 - len(payments)}
        assert views["data-platform"]["rule_hits"] == {
            "views.data-platform.filter.exclude": 300 - len(data)
        }
        assert views["default"]["rule_hits"] == {}

        code, text, _ = await run("--config", mirror.config, "status")
        lines = text.splitlines()
        assert f"  views.payments.filter.include: {300 - len(payments)}" in lines
        at = lines.index("views:")
        assert lines[at + 2].endswith(
            f": {len(payments)} versions ({len(payments)} active), 2 servers"
        )


class TestExport:
    async def test_a_view_exports_exactly_what_it_serves(self, mirror: Mirror) -> None:
        code, out, err = await run("--config", mirror.config, "export", "--view", "payments")
        assert code == 0, err
        payments = _exported(out)
        assert set(payments) == mirror.keys(*PAYMENTS)

        target = mirror.config.parent / "data.json"
        code, _, err = await run(
            "--config", mirror.config, "export", "--view", "data-platform", "--output", target
        )
        assert code == 0, err
        data = _exported(target.read_text())
        assert set(data) == mirror.default_keys() - mirror.keys("ai.smithery/*")

        code, out, err = await run("--config", mirror.config, "export")
        assert code == 0, err
        default = _exported(out)
        assert set(default) == mirror.default_keys()
        # A view serves the default view's entries: the upstream `server` untouched.
        for key, item in payments.items():
            assert item["server"] == default[key]["server"], key

    async def test_the_default_view_by_name_is_the_plain_export(self, mirror: Mirror) -> None:
        _, plain, _ = await run("--config", mirror.config, "export")
        code, named, err = await run("--config", mirror.config, "export", "--view", "default")
        assert code == 0, err
        assert named == plain


class TestExplain:
    async def test_a_served_name_shows_the_views_served_form(self, mirror: Mirror) -> None:
        code, out, err = await run(
            "--config", mirror.config, "explain", "ai.exa/exa", "--view", "payments", "--json"
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["view"] == "payments"
        served = report["served"]
        assert served["server"]["name"] == "ai.exa/exa"
        assert served["_meta"][OFFICIAL]["isLatest"] is True

    async def test_a_name_outside_the_view_says_which_rule_dropped_it(self, mirror: Mirror) -> None:
        name = "ai.shawndurrani/mcp-registry"
        assert mirror.keys(name), "the catalogue changed: pick another name"
        code, out, err = await run(
            "--config", mirror.config, "explain", name, "--view", "payments", "--json"
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["view"] == "payments" and report["served"] is None
        copies = [c for b in report["upstreams"] for c in b["versions"]]
        rules = [v["rule"] for c in copies for v in c["in_view"]["rules"]]
        assert "views.payments.filter.include" in rules

        code, text, err = await run(
            "--config", mirror.config, "explain", name, "--view", "payments"
        )
        assert code == 0, err
        assert "views.payments.filter.include: drop" in text


class TestShippedConfigs:
    """config/example.toml and config/teams.toml load as written, so they never rot."""

    def test_example_loads_and_documents_every_view_and_auth_key(self) -> None:
        path = CONFIG / "example.toml"
        load_config(path, env={})
        text = path.read_text()
        for model, section in ((ViewConfig, "[[views]]"), (AuthConfig, "[views.auth]")):
            assert section in text
            for key in model.model_fields:
                if key in ("filter", "enrich", "override", "auth"):
                    continue  # tables, documented by their own headers
                assert f"# {key} = " in text, f"{section} {key} is not documented"
        for table in ("[views.filter]", "[[views.enrich]]", "[[views.override]]", "[api.auth]"):
            assert table in text, table
        for kind in ('type = "none"', 'type = "bearer"', 'type = "oidc"'):
            assert kind in text, kind

    def test_example_views_load_once_uncommented(self, tmp_path: Path) -> None:
        """Each commented `[[views]]` example is itself valid configuration."""
        blocks = _commented_blocks(CONFIG / "example.toml", "# [[views]]")
        (tmp_path / "payments.tokens").write_text("t0ken\n")
        path = tmp_path / "views.toml"
        text = "".join(blocks).replace(
            "/run/secrets/subregistry/payments-tokens", "payments.tokens"
        )
        path.write_text(text)
        payments, data = load_config(path, env={}).views
        assert payments.name == "payments" and payments.auth.type == "bearer"
        assert [t.get_secret_value() for t in payments.auth.tokens] == ["t0ken"]
        assert payments.filter.latest_versions == 2 and payments.enrich and payments.override
        assert data.name == "data-platform" and data.auth.type == "oidc"
        assert data.auth.required_claims == {"groups": ("data-platform", "platform-admins")}

    def test_teams_is_a_worked_example_of_two_team_views(self, tmp_path: Path) -> None:
        tokens = tmp_path / "payments-tokens"
        tokens.write_text("a-long-random-token\n")
        # The Secret is mounted where the file says; here, the same setting from the
        # environment points at a file of the test's.
        env = {"SUBREGISTRY_VIEWS__PAYMENTS__AUTH__TOKENS_FILE": str(tokens)}
        config = load_config(CONFIG / "teams.toml", env=env)
        payments, data = config.views
        assert (payments.name, data.name) == ("payments", "data-platform")
        assert payments.auth.type == "bearer"
        assert [t.get_secret_value() for t in payments.auth.tokens] == ["a-long-random-token"]
        assert payments.filter.include and data.filter != payments.filter
        assert data.auth.type == "oidc" and data.auth.required_claims
        assert data.auth.issuer and data.auth.audience
        assert payments.base_path != data.base_path
        written = (CONFIG / "teams.toml").read_text()
        assert 'tokens_file = "/' in written  # a mounted Secret, not a token in the file


def _commented_blocks(path: Path, first: str) -> list[str]:
    """Each run of lines from one equal to `first` to the next blank line, `# ` taken off."""
    lines = path.read_text().splitlines()
    blocks = []
    for start in (i for i, line in enumerate(lines) if line == first):
        block = []
        for line in lines[start:]:
            if not line.strip():
                break
            block.append(("" if line == "#" else line.removeprefix("# ")) + "\n")
        blocks.append("".join(block))
    assert blocks, f"no {first!r} in {path}"
    return blocks


class TestDashboard:
    DASHBOARD = Path(__file__).parent.parent / "deploy/grafana/subregistry-dashboard.json"

    @staticmethod
    def view_series() -> set[str]:
        """The names of every exported series that carries a `view` label."""
        metrics = Metrics()
        # prometheus_client offers no public accessor for a metric's name and labels.
        return {
            metric._name
            for metric in vars(metrics).values()
            if isinstance(metric, MetricWrapperBase) and "view" in metric._labelnames
        }

    def test_every_panel_of_a_view_labelled_series_follows_the_view_variable(self) -> None:
        dashboard = json.loads(self.DASHBOARD.read_text())
        [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "view"]
        assert variable["includeAll"] and variable["multi"]
        # "All" must match the empty view too: requests no view answered (unknown paths).
        assert variable["allValue"] == ".*"
        assert "label_values(subregistry_served_servers, view)" in variable["definition"]
        series = self.view_series()
        assert {"subregistry_served_versions", "subregistry_http_requests"} <= series
        shown = 0
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                if any(re.search(rf"\b{name}(_total|_bucket)?\b", expr) for name in series):
                    shown += 1
                    assert 'view=~"$view"' in expr, panel["title"]
                    if "sum by" in expr:
                        assert re.search(r"sum by \([^)]*\bview\b", expr), panel["title"]
                    assert "{{view}}" in target["legendFormat"] or "rule" in expr, panel["title"]
        assert shown >= 5


class TestReadme:
    README = Path(__file__).parent.parent / "README.md"

    def section(self, title: str) -> str:
        return self.README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]

    async def test_the_commands_table_lists_every_option_of_every_command(self) -> None:
        rows: dict[str, str] = {}
        for line in self.section("Commands").splitlines():
            if match := re.match(r"\| `subregistry (?:\[[^]]*\] )?([a-z]+(?: export)?)", line):
                # A command may have a row per form (doctor --mcp-json, doctor --url).
                rows[match[1]] = rows.get(match[1], "") + line
        assert len(rows) == 10, sorted(rows)
        for command in ("explain", "export", "policy export", "doctor"):
            assert "[--view V]" in rows[command], command
        for command, row in rows.items():
            code, out, err = await run(*command.split(), "--help")
            assert code == 0, err
            options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", out)) - {"--help"}
            missing = [o for o in sorted(options) if o not in row]
            assert not missing, f"{command}: {missing} not in the README's commands table"

    def test_views_and_authentication_says_what_works_today(self) -> None:
        text = " ".join(self.section("Views and authentication").split())
        for fact in (
            "a subset of the default view",
            "own `updatedAt` stream and tombstones",
            "without an upstream request",
            "do not send credentials to a registry yet",
            "network-level privacy",
            "`headers` carry the token",
            'url = "https://registry.example.com/teams/payments"',
            "401",
            "403",
            "/.well-known/oauth-protected-resource{base_path}",
        ):
            assert fact in text, fact


def test_the_example_ingress_publishes_every_view_of_teams_toml(tmp_path: Path) -> None:
    """Each view's base path and its protected-resource metadata reach the Service."""
    tokens = tmp_path / "tokens"
    tokens.write_text("t\n")
    env = {"SUBREGISTRY_VIEWS__PAYMENTS__AUTH__TOKENS_FILE": str(tokens)}
    config = load_config(CONFIG / "teams.toml", env=env)
    ingress = Path(__file__).parent.parent / "deploy/kubernetes/ingress.yaml"
    [doc] = [d for d in yaml.safe_load_all(ingress.read_text()) if d]
    prefixes = [
        p["path"]
        for rule in doc["spec"]["rules"]
        for p in rule["http"]["paths"]
        if p["pathType"] == "Prefix"
    ]
    metadata = "/.well-known/oauth-protected-resource"
    for view in config.views:
        for published in (view.base_path, metadata + view.base_path):
            assert any(published == p or published.startswith(p + "/") for p in prefixes), published
