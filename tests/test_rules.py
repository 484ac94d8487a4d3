"""Each rule kind, as a pure function, over the real 2025-12-12 catalogue."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest

from sync.config import Config, config_from_mapping
from sync.curate.rules import Candidate, compile_rules, evaluate
from sync.curate.view import decide
from sync.model import StoredEntry


@pytest.fixture(scope="module")
def candidates(catalogue: list[dict[str, Any]]) -> list[Candidate]:
    return [
        Candidate(
            "official",
            i["server"]["name"],
            i["server"]["version"],
            i["_meta"]["io.modelcontextprotocol.registry/official"]["status"],
            None,
            i["server"].get("description", ""),
            json.dumps(i["server"]),
        )
        for i in catalogue
    ]


def configure(**sections: Any) -> Config:
    return config_from_mapping(
        {"upstreams": [{"name": "official", "url": "http://x.test"}], **sections}
    )


def kept(config: Config, candidates: list[Candidate]) -> list[Candidate]:
    rules = compile_rules(config)["official"].rules
    return [c for c in candidates if evaluate(c, rules).kept]


class TestFilters:
    def test_include_globs(self, candidates: list[Candidate]) -> None:
        result = kept(configure(filter={"include": ["io.github.*", "com.example/*"]}), candidates)
        expected = [c for c in candidates if c.name.startswith(("io.github.", "com.example/"))]
        assert result == expected and 0 < len(result) < len(candidates)

    def test_exclude_globs(self, candidates: list[Candidate]) -> None:
        result = kept(configure(filter={"exclude": ["io.github.homeassistant-ai/*"]}), candidates)
        dropped = len(candidates) - len(result)
        assert dropped == sum(c.name.startswith("io.github.homeassistant-ai/") for c in candidates)
        assert dropped == 59

    def test_exclude_regex_on_name_and_description(self, candidates: list[Candidate]) -> None:
        result = kept(configure(filter={"exclude_regex": ["(?i)crypto|casino"]}), candidates)
        pattern = re.compile("(?i)crypto|casino")
        expected = [
            c
            for c in candidates
            if not pattern.search(c.name) and not pattern.search(c.description)
        ]
        assert result == expected and len(result) < len(candidates)
        by_description = [
            c for c in candidates if pattern.search(c.description) and not pattern.search(c.name)
        ]
        assert by_description, "the catalogue has description-only matches"

    def test_statuses(self, candidates: list[Candidate]) -> None:
        mixed = [
            Candidate(c.upstream, c.name, c.version, s, None, c.description, c.server_text)
            for c, s in zip(candidates[:30], ["active", "deprecated", "deleted"] * 10, strict=True)
        ]
        result = kept(configure(filter={"statuses": ["active", "deprecated"]}), mixed)
        assert Counter(c.status for c in result) == {"active": 10, "deprecated": 10}

    def test_registry_types_or_remotes(self, candidates: list[Candidate]) -> None:
        config = configure(filter={"registry_types": ["npm", "pypi", "oci"], "remotes": True})
        result = kept(config, candidates)

        def ok(c: Candidate, remotes: bool) -> bool:
            types = {p.get("registryType") for p in c.packages()}
            return bool(types & {"npm", "pypi", "oci"}) or (remotes and bool(c.remotes()))

        assert result == [c for c in candidates if ok(c, True)]
        strict = kept(
            configure(filter={"registry_types": ["npm", "pypi", "oci"], "remotes": False}),
            candidates,
        )
        assert strict == [c for c in candidates if ok(c, False)]
        assert len(strict) < len(result) < len(candidates)

    def test_transports(self, candidates: list[Candidate]) -> None:
        result = kept(configure(filter={"transports": ["stdio", "streamable-http"]}), candidates)

        def types(c: Candidate) -> set[str]:
            found = {str(p.get("transport", {}).get("type")) for p in c.packages()}
            return found | {str(r.get("type")) for r in c.remotes()}

        assert result == [c for c in candidates if types(c) & {"stdio", "streamable-http"}]
        assert any(types(c) == {"sse"} for c in candidates if c not in result)

    def test_every_drop_says_why(self, candidates: list[Candidate]) -> None:
        config = configure(filter={"include": ["io.github.*"], "exclude_regex": ["(?i)test"]})
        rules = compile_rules(config)["official"].rules
        for candidate in candidates:
            outcome = evaluate(candidate, rules)
            if not outcome.kept:
                assert outcome.effects[-1].drop and outcome.effects[-1].reason


class TestEnrichAndOverride:
    def test_enrichment_and_override(self, candidates: list[Candidate]) -> None:
        config = configure(
            enrich=[{"match": "ai.exa/*", "meta": {"tier": "approved", "tags": ["search"]}}],
            override=[
                {
                    "name": "ai.exa/exa",
                    "version": "3.1.3",
                    "status": "deprecated",
                    "status_message": "SR-142",
                }
            ],
        )
        rules = compile_rules(config)["official"].rules
        exa = {c.version: evaluate(c, rules) for c in candidates if c.name == "ai.exa/exa"}
        assert all(o.meta == {"tier": "approved", "tags": ["search"]} for o in exa.values())
        assert (exa["3.1.3"].status, exa["3.1.3"].status_message) == ("deprecated", "SR-142")
        assert exa["3.1.3"].decision == {
            "rule": "override[0]",
            "reason": "SR-142",
            "upstreamStatus": "active",
            "status": "deprecated",
        }
        assert exa["3.1.2"].status == "active" and exa["3.1.2"].decision is None

    def test_per_upstream_rules_run_first(self) -> None:
        config = config_from_mapping(
            {
                "upstreams": [
                    {"name": "official", "url": "http://x.test", "filter": {"exclude": ["a.b/*"]}}
                ],
                "filter": {"include": ["a.b/*", "c.d/*"]},
            }
        )
        names = [name for name, _ in compile_rules(config)["official"].rules]
        assert names == ["upstreams.official.filter.exclude", "filter.include"]


def _stored(upstream: str, name: str, version: str, published: str) -> StoredEntry:
    return StoredEntry(
        0,
        upstream,
        name,
        version,
        "{}",
        None,
        "active",
        None,
        None,
        published,
        None,
        "",
        published,
        published,
        None,
    )


class TestGroupRules:
    def test_latest_versions_keeps_the_newest(self) -> None:
        entries = [
            _stored("official", "a.b/c", v, f"2025-01-0{i}T00:00:00Z")
            for i, v in enumerate(["1.0.0", "1.2.0", "1.10.0", "2.0.0-rc.1", "0.9"], 1)
        ]
        config = configure(filter={"latest_versions": 3})
        decisions, hits = decide(entries, ["official"], compile_rules(config))
        served = sorted(d.entry.version for d in decisions if d.served)
        assert served == ["1.10.0", "1.2.0", "2.0.0-rc.1"]
        assert [d.entry.version for d in decisions if d.is_latest] == ["2.0.0-rc.1"]  # semver
        assert hits["filter.latest_versions"] == 2

    def test_first_upstream_owns_the_name(self) -> None:
        config = config_from_mapping(
            {
                "upstreams": [
                    {"name": "private", "path": "p.json"},
                    {"name": "official", "url": "http://x.test"},
                ]
            }
        )
        entries = [
            _stored("official", "a.b/c", "9.0.0", "2025-01-01T00:00:00Z"),
            _stored("private", "a.b/c", "1.0.0", "2025-01-01T00:00:00Z"),
        ]
        decisions, _ = decide(entries, ["private", "official"], compile_rules(config))
        by_upstream = {d.entry.upstream: d for d in decisions}
        assert by_upstream["private"].served and by_upstream["private"].is_latest
        assert not by_upstream["official"].served
        assert by_upstream["official"].reason.startswith("shadowed")
