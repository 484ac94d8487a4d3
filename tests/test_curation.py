"""Curation end to end: a private file upstream in front of the official one, with the
issue's rules as written, reapply without fetching, and `explain`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sync.config import Config, config_from_mapping
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store import open_reader
from tests.cli_helpers import run
from tests.fake_upstream import OFFICIAL, FakeRegistry
from tests.helpers import BOTH_BACKENDS, no_sleep, official, open_writer, served

NS = "com.example.subregistry"
SHADOWED = "io.github.homeassistant-ai/ha-mcp"

RULES = """
[mirror]
namespace = "com.example.subregistry"     # the served _meta key for everything this mirror adds

[filter]
include = ["io.github.*", "com.example/*"]   # name globs; empty or absent = everything
exclude = ["io.github.spammer/*"]
exclude_regex = ['(?i)crypto|casino']         # on name and description
statuses = ["active", "deprecated"]           # which statuses are served
registry_types = ["npm", "pypi", "oci"]       # keep entries with a package of one of these types...
remotes = true                                # ...or with a remote
transports = ["stdio", "streamable-http"]
latest_versions = 3                           # at most the 3 newest versions of each server

[[enrich]]
match = "io.github.acme/*"
meta = { tier = "approved", tags = ["finance", "internal"] }

[[override]]
name = "io.github.someone/risky-server"
status = "deprecated"
status_message = "Blocked by security review SR-142; use com.example/safe-server"
"""

PRIVATE = [
    {
        "name": "com.example/safe-server",
        "description": "Reviewed replacement",
        "version": "2.1.0",
        "packages": [
            {
                "registryType": "npm",
                "identifier": "@example/safe-server",
                "version": "2.1.0",
                "transport": {"type": "stdio"},
            }
        ],
    },
    {
        "name": SHADOWED,
        "description": "Our patched fork",
        "version": "0.0.1-private",
        "remotes": [{"type": "streamable-http", "url": "https://mcp.example.com/ha"}],
    },
]


def _config(
    tmp_path: Path, url: str, rules: str = RULES, *, storage: dict[str, Any] | None = None
) -> Config:
    data = tomllib.loads(rules)
    data["storage"] = storage or {"path": str(tmp_path / "mirror.db")}
    data["upstreams"] = [
        {"name": "private", "path": str(tmp_path / "private.json")},
        {"name": "official", "url": url, "page_delay": 0, "retries": 0},
    ]
    return config_from_mapping(data)


@pytest.fixture
def private_file(tmp_path: Path) -> Path:
    path = tmp_path / "private.json"
    path.write_text(json.dumps(PRIVATE))
    return path


@pytest.fixture
def curated_fake(fake: FakeRegistry) -> FakeRegistry:
    remote = [{"type": "streamable-http", "url": "https://x.example/mcp"}]
    for name, description in [
        ("io.github.acme/ledger", "Ledger lookups"),
        ("io.github.someone/risky-server", "Does risky things"),
        ("io.github.spammer/free-stuff", "Totally legit"),
        ("io.github.lucky/slots", "Best CASINO odds"),
    ]:
        fake.publish(
            {"name": name, "description": description, "version": "1.0.0", "remotes": remote}
        )
    return fake


async def _sync(config: Config) -> dict[tuple[str, str], dict[str, Any]]:
    store = await open_writer(config.storage)
    engine = Engine(config, store, Metrics(), sleep=no_sleep)
    try:
        await engine.startup()
        for upstream in config.upstreams:
            result = await engine.run(upstream.name)
            assert result.outcome == "ok", result.error
    finally:
        await engine.close()
        await store.close()
    reader = await open_reader(config.storage)
    try:
        return await served(reader)
    finally:
        await reader.close()


def _visible(mirror: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], Any]:
    return {k: v for k, v in mirror.items() if official(v)["status"] != "deleted"}


@BOTH_BACKENDS
class TestCuratedMirror:
    async def test_rules_as_written(
        self,
        tmp_path: Path,
        private_file: Path,
        curated_fake: FakeRegistry,
        fake_url: str,
        storage_section: dict[str, Any],
    ) -> None:
        mirror = _visible(await _sync(_config(tmp_path, fake_url, storage=storage_section)))
        names = {name for name, _ in mirror}
        assert all(n.startswith(("io.github.", "com.example/")) for n in names)
        assert "io.github.spammer/free-stuff" not in names
        assert "io.github.lucky/slots" not in names
        per_name: dict[str, int] = {}
        for name, _ in mirror:
            per_name[name] = per_name.get(name, 0) + 1
        assert max(per_name.values()) == 3

        ledger = mirror[("io.github.acme/ledger", "1.0.0")]["meta"][NS]
        assert (ledger["tier"], ledger["tags"], ledger["upstream"]) == (
            "approved",
            ["finance", "internal"],
            "official",
        )
        assert ledger["upstreamUpdatedAt"] and ledger["syncedAt"]

        risky = mirror[("io.github.someone/risky-server", "1.0.0")]["meta"]
        assert risky[OFFICIAL]["status"] == "deprecated"
        assert risky[NS]["decision"]["status"] == "deprecated"
        assert risky[NS]["decision"]["upstreamStatus"] == "active"
        assert (
            "SR-142"
            in official(mirror[("io.github.someone/risky-server", "1.0.0")])["statusMessage"]
        )

    async def test_private_names_cannot_be_shadowed(
        self,
        tmp_path: Path,
        private_file: Path,
        curated_fake: FakeRegistry,
        fake_url: str,
        storage_section: dict[str, Any],
    ) -> None:
        mirror = _visible(await _sync(_config(tmp_path, fake_url, storage=storage_section)))
        assert [v for n, v in mirror if n == SHADOWED] == ["0.0.1-private"]
        item = mirror[(SHADOWED, "0.0.1-private")]
        assert item["meta"][NS]["upstream"] == "private"
        assert official(item)["isLatest"] is True and official(item)["publishedAt"]
        assert item["server"] == json.dumps(PRIVATE[1])  # the file's bytes, as written
        safe = mirror[("com.example/safe-server", "2.1.0")]
        assert safe["meta"][NS]["upstream"] == "private"

    async def test_removing_from_the_file_withdraws_the_entry(
        self,
        tmp_path: Path,
        private_file: Path,
        curated_fake: FakeRegistry,
        fake_url: str,
        storage_section: dict[str, Any],
    ) -> None:
        config = _config(tmp_path, fake_url, storage=storage_section)
        await _sync(config)
        private_file.write_text(json.dumps(PRIVATE[1:]))
        mirror = await _sync(config)
        assert official(mirror[("com.example/safe-server", "2.1.0")])["status"] == "deleted"

    async def test_one_failing_upstream_leaves_the_other_alone(
        self,
        tmp_path: Path,
        private_file: Path,
        curated_fake: FakeRegistry,
        fake_url: str,
        storage_section: dict[str, Any],
    ) -> None:
        config = _config(tmp_path, fake_url, storage=storage_section)
        before = _visible(await _sync(config))
        curated_fake.fail(503, times=50)
        private_file.write_text(json.dumps([*PRIVATE, {**PRIVATE[0], "version": "2.2.0"}]))
        store = await open_writer(config.storage)
        engine = Engine(config, store, Metrics(), sleep=no_sleep)
        try:
            results = [await engine.run(u.name) for u in config.upstreams]
        finally:
            await engine.close()
            await store.close()
        assert [r.outcome for r in results] == ["ok", "failed"]
        reader = await open_reader(config.storage)
        try:
            after = _visible(await served(reader))
        finally:
            await reader.close()
        assert set(after) == set(before) | {("com.example/safe-server", "2.2.0")}


class TestReapply:
    @BOTH_BACKENDS
    async def test_changed_rules_apply_on_restart_without_fetching(
        self,
        tmp_path: Path,
        private_file: Path,
        curated_fake: FakeRegistry,
        fake_url: str,
        storage_section: dict[str, Any],
    ) -> None:
        before = await _sync(_config(tmp_path, fake_url, storage=storage_section))
        stricter = RULES.replace(
            'exclude = ["io.github.spammer/*"]',
            'exclude = ["io.github.spammer/*", "io.github.acme/*"]',
        )
        config = _config(tmp_path, fake_url, stricter, storage=storage_section)
        curated_fake.requests.clear()
        store = await open_writer(config.storage)
        engine = Engine(config, store, Metrics(), sleep=no_sleep)
        try:
            await engine.startup()
        finally:
            await engine.close()
            await store.close()
        assert curated_fake.requests == []
        reader = await open_reader(config.storage)
        try:
            after = await served(reader)
        finally:
            await reader.close()
        changed = {
            k for k in after if official(after[k])["updatedAt"] != official(before[k])["updatedAt"]
        }
        assert changed == {("io.github.acme/ledger", "1.0.0")}
        ledger = after[("io.github.acme/ledger", "1.0.0")]
        assert official(ledger)["status"] == "deleted"
        assert "io.github.acme/*" in ledger["meta"][NS]["withdrawn"]

    # SQLite only: the one-shot commands lead a PostgreSQL store through sync/cli.py (#12's
    # copy/deploy work), which this test does not exercise.
    async def test_reapply_command_and_explain(
        self, tmp_path: Path, private_file: Path, curated_fake: FakeRegistry, fake_url: str
    ) -> None:
        config = _config(tmp_path, fake_url)
        await _sync(config)
        toml = tmp_path / "curated.toml"
        data = RULES + (
            f'\n[storage]\npath = "{tmp_path / "mirror.db"}"\n'
            f'[[upstreams]]\nname = "private"\npath = "{private_file}"\n'
            f'[[upstreams]]\nname = "official"\nurl = "{fake_url}"\n'
        )
        toml.write_text(data)
        curated_fake.requests.clear()
        code, out, err = await run("--config", toml, "reapply")
        assert code == 0, err
        assert "served rows changed" in out and curated_fake.requests == []

        code, out, _ = await run("--config", toml, "explain", "io.github.acme/ledger")
        assert code == 0
        assert "1.0.0: SERVED (active, latest)" in out
        assert "enrich[0]: enrich: name matches 'io.github.acme/*'" in out
        assert '"tier": "approved"' in out

        code, out, _ = await run("--config", toml, "explain", "io.github.lucky/slots")
        assert "not served" in out
        assert "filter.exclude_regex: drop: description matches /(?i)crypto|casino/" in out

        code, out, _ = await run("--config", toml, "explain", SHADOWED, "--json")
        report = json.loads(out)
        blocks = {b["upstream"]: b["versions"] for b in report["upstreams"]}
        assert blocks["private"][0]["served"] is True
        assert all(
            not v["served"] and v["reason"].startswith("shadowed") for v in blocks["official"]
        )
        assert report["served"]["_meta"][NS]["upstream"] == "private"

        code, out, _ = await run("--config", toml, "status", "--json")
        hits = json.loads(out)["rule_hits"]
        assert hits["filter.include"] > 0 and hits["enrich[0]"] == 1

        code, _, err = await run("--config", toml, "explain", "io.github.nobody/none")
        assert code == 1 and "no upstream holds" in err
