"""Named views in curation (#13): each view computed on top of the default view's outcome,
built in every page's transaction, reapplied on its own when its rules change, dropped when
removed, explained, counted and searched per view.

The pure parts are tested over hand-made StoredEntry lists; the rest end to end, with the
real engine against a fake registry on a loopback port, on both backends."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sync.config import DEFAULT_VIEW, Config, config_from_mapping
from sync.curate.curation import Curator, rules_digest, view_digest
from sync.curate.explain import explain, render
from sync.curate.rules import compile_rules, compile_view
from sync.curate.view import decide
from sync.curate.views import NamedView, build_views, derive
from sync.errors import ConfigError
from sync.metrics import Metrics
from sync.model import ExistingServed, ServedRow, StoredEntry
from sync.pull.engine import Engine
from sync.store import ListQuery, Store, open_reader
from tests.fake_upstream import OFFICIAL, FakeRegistry
from tests.helpers import BOTH_BACKENDS, no_sleep, official, open_writer, served

NS = "com.example.subregistry"
SMITHERY = "ai.smithery/*"

# ---------------------------------------------------------------------------------------------
# Pure: views over StoredEntry lists


def entry(
    id_: int, name: str, version: str, status: str = "active", published: str | None = None
) -> StoredEntry:
    stamp = published or f"2025-01-{id_:02d}T00:00:00Z"
    return StoredEntry(
        id_,
        "official",
        name,
        version,
        json.dumps({"name": name, "version": version}),
        None,
        status,
        None,
        None,
        stamp,
        stamp,
        f"about {name}",
        stamp,
        stamp,
        None,
    )


def configure(**sections: Any) -> Config:
    data: dict[str, Any] = {
        "mirror": {"namespace": NS},
        "upstreams": [{"name": "official", "url": "http://127.0.0.1:9"}],
    }
    data.update(sections)
    return config_from_mapping(data)


def view_of(config: Config, name: str) -> NamedView:
    spec = config.view(name)
    assert spec is not None
    return NamedView(name, compile_view(spec))


def rows_of(config: Config, entries: list[StoredEntry], view: str) -> dict[str, ServedRow]:
    built = build_views(
        entries,
        ["official"],
        compile_rules(config),
        [view_of(config, v.name) for v in config.views],
        NS,
        {},
        {DEFAULT_VIEW, view},
    )
    return {row.version: row for row in built[view].rows}


def meta(row: ServedRow) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(row.meta.replace('"{stamp}"', '"x"'))
    return value


class TestDerive:
    def test_a_view_is_a_subset_of_the_default(self) -> None:
        config = configure(
            filter={"exclude": ["x.io/hidden"]},
            views=[{"name": "team", "base_path": "/team", "filter": {"include": ["x.io/*"]}}],
        )
        entries = [entry(1, "x.io/hidden", "1.0.0"), entry(2, "x.io/shown", "1.0.0")]
        decisions, _ = decide(entries, ["official"], compile_rules(config))
        derived, _ = derive(decisions, view_of(config, "team"))
        by_name = {d.entry.name: d for d in derived}
        assert by_name["x.io/shown"].served
        hidden = by_name["x.io/hidden"]
        assert not hidden.served
        assert hidden.reason == "not served by the default view: name matches 'x.io/hidden'"

    def test_each_view_serves_its_own_rendering_however_many_views(self) -> None:
        """Rows rendered for one view are shared with another only when both serve the very
        same outcome: with several views each enriching, no view carries another's facts
        (an outcome freed after one view was once mistaken for the next view's by address)."""
        teams = [f"t{i}" for i in range(6)]
        config = configure(
            views=[
                {
                    "name": team,
                    "base_path": f"/{team}",
                    "enrich": [{"match": "*", "meta": {"team": team}}],
                }
                for team in teams
            ]
        )
        entries = [
            entry(
                i + 1, f"x.io/s{i % 7}", f"1.0.{i}", published=f"2025-01-{i % 28 + 1:02d}T00:00:00Z"
            )
            for i in range(60)
        ]
        built = build_views(
            entries,
            ["official"],
            compile_rules(config),
            [view_of(config, team) for team in teams],
            NS,
            {},
            {DEFAULT_VIEW, *teams},
        )
        assert all(
            NS not in meta(row) or "team" not in meta(row)[NS] for row in built["default"].rows
        )
        for team in teams:
            found = Counter(meta(row)[NS].get("team") for row in built[team].rows)
            assert found == Counter({team: 60}), (team, found)

    def test_the_view_sees_the_default_status_and_its_override_wins(self) -> None:
        config = configure(
            override=[{"name": "x.io/a", "version": "1.0.0", "status": "deprecated"}],
            enrich=[{"match": "x.io/*", "meta": {"tier": "approved", "owner": "platform"}}],
            views=[
                {
                    "name": "team",
                    "base_path": "/team",
                    "filter": {"statuses": ["active"]},
                    "enrich": [{"match": "x.io/b", "meta": {"tier": "team-only"}}],
                    "override": [{"name": "x.io/b", "status": "deprecated"}],
                }
            ],
        )
        a = [entry(1, "x.io/a", "1.0.0"), entry(2, "x.io/a", "2.0.0")]
        team = rows_of(config, a, "team")
        # 1.0.0 is deprecated by the global override, so the view's `statuses` drops it.
        assert set(team) == {"2.0.0"}
        b = rows_of(config, [entry(3, "x.io/b", "1.0.0")], "team")["1.0.0"]
        own = meta(b)[NS]
        assert own["tier"] == "team-only" and own["owner"] == "platform"  # default, then view
        assert own["decision"] == {
            "rule": "views.team.override[0]",
            "reason": "status set to deprecated by the mirror",
            "upstreamStatus": "active",
            "status": "deprecated",
        }
        assert meta(b)[OFFICIAL]["status"] == "deprecated" and b.status == "deprecated"
        default = rows_of(config, [entry(3, "x.io/b", "1.0.0")], DEFAULT_VIEW)["1.0.0"]
        assert meta(default)[NS]["tier"] == "approved" and default.status == "active"

    def test_caps_and_latest_per_view(self) -> None:
        config = configure(
            views=[
                {"name": "two", "base_path": "/two", "filter": {"latest_versions": 2}},
                {"name": "live", "base_path": "/live", "filter": {"statuses": ["active"]}},
            ]
        )
        entries = [
            entry(1, "x.io/a", "1.0.0"),
            entry(2, "x.io/a", "1.1.0"),
            entry(3, "x.io/a", "1.2.0"),
            entry(4, "x.io/a", "2.0.0", status="deprecated"),
        ]
        default = rows_of(config, entries, DEFAULT_VIEW)
        assert {v for v, r in default.items() if r.is_latest} == {"2.0.0"}
        two = rows_of(config, entries, "two")
        assert set(two) == {"1.2.0", "2.0.0"}
        assert {v for v, r in two.items() if r.is_latest} == {"2.0.0"}
        live = rows_of(config, entries, "live")
        assert set(live) == {"1.0.0", "1.1.0", "1.2.0"}
        assert {v for v, r in live.items() if r.is_latest} == {"1.2.0"}
        assert meta(live["1.2.0"])[OFFICIAL]["isLatest"] is True
        decisions, _ = decide(entries, ["official"], compile_rules(config))
        derived, hits = derive(decisions, view_of(config, "two"))
        assert hits == Counter({"views.two.filter.latest_versions": 2})
        dropped = {d.entry.version: d.reason for d in derived if not d.served}
        assert (
            dropped["1.0.0"] == "views.two.filter.latest_versions: not among the 2 newest versions"
        )

    def test_name_rules_asked_once_per_name_decide_as_per_version(self) -> None:
        config = configure(
            views=[
                {
                    "name": "team",
                    "base_path": "/team",
                    "filter": {
                        "include": ["x.io/*"],
                        "exclude": ["x.io/b"],
                        "statuses": ["active"],
                    },
                }
            ]
        )
        entries = [
            entry(i + 1, name, f"1.0.{i}", status="deprecated" if i % 3 == 0 else "active")
            for i, name in enumerate(["x.io/a", "x.io/a", "x.io/b", "x.io/b", "y.io/c", "x.io/a"])
        ]
        fast = view_of(config, "team")
        assert fast.rules.by_name == 2
        slow = NamedView("team", dataclasses.replace(fast.rules, by_name=0))
        for name in ("x.io/a", "x.io/b", "y.io/c"):
            of_name = [e for e in entries if e.name == name]
            decisions, _ = decide(of_name, ["official"], compile_rules(config))
            quick, quick_hits = derive(decisions, fast)
            full, full_hits = derive(decisions, slow)
            assert quick_hits == full_hits and quick_hits
            assert [(d.entry.id, d.served, d.reason, d.is_latest) for d in quick] == [
                (d.entry.id, d.served, d.reason, d.is_latest) for d in full
            ]

    def test_a_row_leaving_a_view_is_its_tombstone_with_the_rule(self) -> None:
        config = configure(
            views=[{"name": "team", "base_path": "/team", "filter": {"exclude": ["x.io/a"]}}]
        )
        entries = [entry(1, "x.io/a", "1.0.0")]
        before = configure(views=[{"name": "team", "base_path": "/team"}])
        first = build_views(
            entries,
            ["official"],
            compile_rules(before),
            [view_of(before, "team")],
            NS,
            {},
            {"team"},
        )
        existing = {"team": {("x.io/a", "1.0.0"): _existing(first["team"].rows[0])}}
        again = build_views(
            entries, ["official"], compile_rules(config), [view_of(config, "team")], NS, existing,
            {"team"},
        )  # fmt: skip
        (row,) = again["team"].rows
        assert row.status == "deleted"
        assert meta(row)[NS]["withdrawn"] == "views.team.filter.exclude: name matches 'x.io/a'"
        assert set(again) == {"team"}  # the default view is decided, not written

    def test_digests(self) -> None:
        plain = configure(views=[{"name": "team", "base_path": "/team"}])
        other = configure(views=[{"name": "team", "base_path": "/elsewhere", "description": "x"}])
        stricter = configure(
            views=[{"name": "team", "base_path": "/team", "filter": {"include": ["x.io/*"]}}]
        )
        globally = configure(
            filter={"exclude": ["y/*"]}, views=[{"name": "team", "base_path": "/team"}]
        )
        assert rules_digest(plain) == rules_digest(stricter) == rules_digest(configure())
        team = plain.views[0]
        assert view_digest(plain, team) == view_digest(other, other.views[0])  # path, text
        assert view_digest(plain, team) != view_digest(stricter, stricter.views[0])
        assert view_digest(plain, team) != view_digest(globally, globally.views[0])


def _existing(row: ServedRow) -> ExistingServed:
    return ExistingServed(row.entry_id, row.form)


class TestExplain:
    CONFIG = configure(
        override=[{"name": "x.io/a", "version": "1.0.0", "status": "deprecated"}],
        views=[
            {
                "name": "team",
                "base_path": "/team",
                "filter": {"statuses": ["active"], "latest_versions": 1},
            }
        ],
    )
    ENTRIES = (
        entry(1, "x.io/a", "1.0.0"),
        entry(2, "x.io/a", "1.1.0"),
        entry(3, "x.io/a", "2.0.0"),
    )

    def test_a_named_view_shows_the_default_verdict_then_its_own(self) -> None:
        report = explain(self.CONFIG, self.ENTRIES, None, view="team")
        assert report["view"] == "team"
        copies = {c["version"]: c for c in report["upstreams"][0]["versions"]}
        old = copies["1.0.0"]
        assert (old["served"], old["served_status"]) == (True, "deprecated")
        assert old["in_view"]["served"] is False
        assert old["in_view"]["reason"].startswith("views.team.filter.statuses: status")
        assert {"rule": "views.team.filter.statuses", "verdict": "drop"}.items() <= old["in_view"][
            "rules"
        ][0].items()
        middle = copies["1.1.0"]["in_view"]
        assert middle["reason"] == (
            "views.team.filter.latest_versions: not among the 1 newest versions"
        )
        newest = copies["2.0.0"]["in_view"]
        assert (newest["served"], newest["is_latest"], newest["served_status"]) == (
            True,
            True,
            "active",
        )
        text = render(report, None)
        assert "x.io/a (view team)" in text
        assert "1.0.0: default view: SERVED (deprecated)" in text
        assert "in view team: not served - views.team.filter.statuses" in text
        assert "in view team: SERVED (active, latest) - served" in text

    def test_the_default_view_report_is_unchanged_and_unknown_views_refused(self) -> None:
        report = explain(self.CONFIG, self.ENTRIES, "1.0.0")
        assert report["view"] == DEFAULT_VIEW
        assert "in_view" not in report["upstreams"][0]["versions"][0]
        assert "in view" not in render(report, None)
        with pytest.raises(ConfigError, match="no view named 'nope'"):
            explain(self.CONFIG, self.ENTRIES, None, view="nope")


# ---------------------------------------------------------------------------------------------
# End to end: the engine, a fake registry, a real store

GLOBAL = {
    "filter": {"exclude": ["io.github.brave/*"]},
    "override": [{"name": SMITHERY, "status": "deprecated"}],
}
PAYMENTS = {
    "name": "payments",
    "base_path": "/teams/payments",
    "filter": {"include": ["ai.*", "io.github.brave/*"], "statuses": ["active"]},
    "enrich": [{"match": "ai.*", "meta": {"team": "payments"}}],
}
DATA = {
    "name": "data",
    "base_path": "/teams/data",
    "filter": {"include": ["io.github.*"], "latest_versions": 2},
}

Make = Callable[..., Config]


def make(make_config: Make, fake_url: str, *views: dict[str, Any], **rules: Any) -> Config:
    return make_config(
        {"name": "official", "url": fake_url},
        mirror={"namespace": NS},
        views=list(views),
        **rules,
    )


async def run(config: Config, store: Store | None = None, *, sync: bool = True) -> Metrics:
    """Start an engine as the daemon does (ensure_current), and sync once if asked."""
    own = store is None
    writer = store if store is not None else await open_writer(config.storage)
    metrics = Metrics()
    engine = Engine(config, writer, metrics, sleep=no_sleep, backoff=(0.0, 0.0))
    try:
        await engine.startup()
        if sync:
            result = await engine.run("official")
            assert result.outcome == "ok", result.error
    finally:
        await engine.close()
        if own:
            await writer.close()
    return metrics


async def views(config: Config, *names: str) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    reader = await open_reader(config.storage)
    try:
        return {name: await served(reader, name) for name in names}
    finally:
        await reader.close()


def visible(rows: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], Any]:
    return {k: v for k, v in rows.items() if official(v)["status"] != "deleted"}


def stamps(rows: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {k: official(v)["updatedAt"] for k, v in rows.items()}


@BOTH_BACKENDS
class TestViewsEndToEnd:
    async def test_every_view_is_built_in_the_pages_of_a_pass(
        self, make_config: Make, fake_url: str
    ) -> None:
        config = make(make_config, fake_url, PAYMENTS, DATA, **GLOBAL)
        metrics = await run(config)
        got = await views(config, DEFAULT_VIEW, "payments", "data")
        default = visible(got[DEFAULT_VIEW])
        assert default and not any(n.startswith("io.github.brave/") for n, _ in default)

        payments = visible(got["payments"])
        expected = {
            k
            for k, v in default.items()
            if k[0].startswith("ai.") and official(v)["status"] == "active"
        }
        assert set(payments) == expected and len(expected) > 10
        assert not any(n.startswith("ai.smithery/") for n, _ in payments)  # deprecated globally
        assert all(v["meta"][NS]["team"] == "payments" for v in payments.values())
        assert all(official(v)["status"] == "active" for v in payments.values())

        data = visible(got["data"])
        names = {n for n, _ in default if n.startswith("io.github.")}
        assert {n for n, _ in data} == names and set(data) <= set(default)
        per_name = Counter(n for n, _ in data)
        assert max(per_name.values()) == 2
        latest = {n: v for (n, v), item in data.items() if official(item)["isLatest"]}
        assert set(latest) == names  # exactly one latest per name, among the kept versions
        for name, version in latest.items():
            assert official(default[(name, version)])["isLatest"] is True

        reader = await open_reader(config.storage)
        try:
            hits = await reader.rule_hits("payments")
            default_hits = await reader.rule_hits(DEFAULT_VIEW)
        finally:
            await reader.close()
        assert hits["views.payments.filter.include"] > 0
        assert hits["views.payments.filter.statuses"] == sum(
            1 for n, _ in default if n.startswith("ai.smithery/")
        )
        assert hits["views.payments.enrich[0]"] == len(payments)
        assert not any(rule.startswith("views.") for rule in default_hits)
        sample = metrics.registry.get_sample_value(
            "subregistry_rule_hits_total",
            {"view": "payments", "rule": "views.payments.filter.include"},
        )
        assert sample == hits["views.payments.filter.include"]

    async def test_search_answers_per_view(self, make_config: Make, fake_url: str) -> None:
        config = make(make_config, fake_url, PAYMENTS, DATA)
        await run(config)
        got = await views(config, "payments", "data")
        reader = await open_reader(config.storage)
        try:
            # A long (indexed) term and a short (scanned) one; each matches rows in both views.
            for term in ("server", "mc"):
                for view in ("payments", "data"):
                    found = await reader.list_servers(ListQuery(view, 100, search=term))
                    keys = {(n, v) for n, v, _, _ in found}
                    rows = visible(got[view])
                    expected = {
                        k
                        for k, item in rows.items()
                        if term in k[0].lower()
                        or term in json.loads(item["server"]).get("description", "").lower()
                    }
                    assert keys == set(sorted(expected)[:101]) and keys, (term, view)
        finally:
            await reader.close()

    async def test_adding_changing_removing_a_view_touches_that_view_only(
        self, make_config: Make, fake_url: str, fake: FakeRegistry
    ) -> None:
        first = make(make_config, fake_url, DATA)
        await run(first)
        before = await views(first, DEFAULT_VIEW, "data")

        # Adding a view builds it, without fetching anything and without touching the others.
        fake.requests.clear()
        added = make(make_config, fake_url, DATA, PAYMENTS)
        await run(added, sync=False)
        assert fake.requests == []
        after_add = await views(added, DEFAULT_VIEW, "data", "payments")
        assert stamps(after_add[DEFAULT_VIEW]) == stamps(before[DEFAULT_VIEW])
        assert stamps(after_add["data"]) == stamps(before["data"])
        assert len(visible(after_add["payments"])) > 10

        # Changing one view's rules bumps only its rows whose served form changed.
        narrower = {**PAYMENTS, "filter": {**PAYMENTS["filter"], "exclude": [SMITHERY]}}
        changed = make(make_config, fake_url, DATA, narrower)
        await run(changed, sync=False)
        assert fake.requests == []
        after = await views(changed, DEFAULT_VIEW, "data", "payments")
        assert stamps(after[DEFAULT_VIEW]) == stamps(before[DEFAULT_VIEW])
        assert stamps(after["data"]) == stamps(before["data"])
        moved = {
            k for k, s in stamps(after["payments"]).items() if s != stamps(after_add["payments"])[k]
        }
        left = {k for k in after_add["payments"] if k[0].startswith("ai.smithery/")}
        assert moved == left and left
        for key in left:
            row = after["payments"][key]
            assert official(row)["status"] == "deleted"
            assert row["meta"][NS]["withdrawn"] == (
                "views.payments.filter.exclude: name matches 'ai.smithery/*'"
            )
        # A mirror of that view learns of it incrementally, through `updated_since`.
        since = max(stamps(after_add["payments"]).values())
        reader = await open_reader(changed.storage)
        try:
            delta = await reader.list_servers(
                ListQuery("payments", 1000, updated_since=since, include_deleted=True)
            )
            assert {(n, v) for n, v, _, _ in delta} == left
            assert await reader.list_servers(ListQuery("data", 100, updated_since=since)) == []
        finally:
            await reader.close()

        # Removing a view drops its rows, rule hits and digest; the others keep theirs.
        removed = make(make_config, fake_url, DATA)
        store = await open_writer(removed.storage)
        try:
            with capture_logs() as events:
                await run(removed, store, sync=False)
            async with store.transaction():
                digests = await store.settings_under("rules_digest:")
        finally:
            await store.close()
        assert fake.requests == []
        dropped = [e for e in events if e["event"] == "curation.view_dropped"]
        assert [(e["view"], e["rows"]) for e in dropped] == [("payments", len(after["payments"]))]
        assert set(digests) == {"rules_digest:default", "rules_digest:data"}
        reader = await open_reader(removed.storage)
        try:
            assert await reader.served_counts("payments") == ({}, 0)
            assert await reader.rule_hits("payments") == {}
            assert await reader.rule_hits("data")
        finally:
            await reader.close()
        final = await views(removed, DEFAULT_VIEW, "data")
        assert stamps(final[DEFAULT_VIEW]) == stamps(before[DEFAULT_VIEW])
        assert stamps(final["data"]) == stamps(before["data"])

    async def test_a_full_reapply_drops_the_views_no_longer_configured(
        self, make_config: Make, fake_url: str
    ) -> None:
        await run(make(make_config, fake_url, PAYMENTS, DATA))
        config = make(make_config, fake_url, DATA)
        store = await open_writer(config.storage)
        try:
            await Curator(config, store, Metrics()).reapply()  # what `subregistry reapply` runs
        finally:
            await store.close()
        reader = await open_reader(config.storage)
        try:
            assert await reader.served_counts("payments") == ({}, 0)
            assert (await reader.served_counts("data"))[1] > 0
        finally:
            await reader.close()

    async def test_a_global_rule_change_reapplies_every_view(
        self, make_config: Make, fake_url: str, fake: FakeRegistry
    ) -> None:
        config = make(make_config, fake_url, PAYMENTS, DATA)
        await run(config)
        before = await views(config, DEFAULT_VIEW, "payments", "data")
        fake.requests.clear()
        stricter = make(
            make_config, fake_url, PAYMENTS, DATA, filter={"exclude": ["ai.*", "io.github.brave/*"]}
        )
        with capture_logs() as events:
            await run(stricter, sync=False)
        assert fake.requests == []
        (event,) = [e for e in events if e["event"] == "curation.reapplied"]
        assert event["views"] == [DEFAULT_VIEW, "payments", "data"]
        after = await views(stricter, DEFAULT_VIEW, "payments", "data")
        assert visible(after["payments"]) == {}
        moved = {k for k, s in stamps(after["data"]).items() if s != stamps(before["data"])[k]}
        assert moved == {k for k in before["data"] if k[0].startswith("io.github.brave/")}
        gone = after["payments"][next(iter(visible(before["payments"])))]
        assert gone["meta"][NS]["withdrawn"].startswith("not served by the default view: ")


class Counting:
    """The real store, with its calls counted (how a test sees what a page asks of it)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.store, name)
        if not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return value(*args, **kwargs)

        return counted


async def test_views_cost_no_extra_reads_or_transactions(
    make_config: Make, fake_url: str, tmp_path: Path
) -> None:
    """Each page reads its names' entries once and commits once, however many views."""
    calls = {}
    for count, chosen in ((0, ()), (2, (PAYMENTS, DATA))):
        base = make(make_config, fake_url, *chosen)
        storage = base.storage.model_copy(update={"path": tmp_path / f"views-{count}.db"})
        config = base.model_copy(update={"storage": storage})
        store = await open_writer(config.storage)
        counting = Counting(store)
        try:
            await run(config, counting)  # type: ignore[arg-type]
        finally:
            await store.close()
        calls[count] = counting.calls
        if chosen:
            got = await views(config, "payments", "data")
            assert visible(got["payments"]) and visible(got["data"])
    for method in ("entries_for", "transaction", "served_states", "take_pending"):
        assert calls[2][method] == calls[0][method] > 0, method
    assert calls[2]["write_served"] == 3 * calls[0]["write_served"]
