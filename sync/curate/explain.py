"""`subregistry explain`: every rule's verdict on every stored copy of a server, and why the
mirror serves what it serves. Pure: it takes stored entries and returns a report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sync.config import DEFAULT_VIEW, Config
from sync.curate.rules import Candidate, Rule, compile_rules, compile_view
from sync.curate.view import EntryDecision, candidate_of, decide
from sync.curate.views import NamedView, derive
from sync.model import StoredEntry

__all__ = ["explain", "render"]


def _verdicts(candidate: Candidate, rules: Sequence[tuple[str, Rule]]) -> list[dict[str, Any]]:
    """Every rule's own verdict, each asked on its own (so a rule after a drop still says
    what it would have done)."""
    verdicts: list[dict[str, Any]] = []
    for rule_name, rule in rules:
        effect = rule(candidate)
        if effect is None:
            verdicts.append({"rule": rule_name, "verdict": "no objection"})
        else:
            verdict = "drop" if effect.drop else ("change status" if effect.status else "enrich")
            verdicts.append({"rule": rule_name, "verdict": verdict, "reason": effect.reason})
    return verdicts


def _in_view(default: EntryDecision, final: EntryDecision, named: NamedView) -> dict[str, Any]:
    """The view's part of a copy's report: its rules' effects on the copy as the default view
    serves it, and the final verdict in the view."""
    rules: list[dict[str, Any]] = []
    outcome = default.outcome
    if default.served and outcome is not None:
        entry = default.entry
        candidate = Candidate(
            entry.upstream,
            entry.name,
            entry.version,
            outcome.status,
            outcome.status_message,
            entry.description,
            entry.server,
        )
        rules = _verdicts(candidate, named.rules.rules)
    served_status = final.outcome.status if final.served and final.outcome else None
    return {
        "view": named.name,
        "rules": rules,
        "served": final.served,
        "served_status": served_status,
        "is_latest": final.is_latest,
        "reason": final.reason,
    }


def explain(
    config: Config,
    entries: Sequence[StoredEntry],
    version: str | None,
    view: str = DEFAULT_VIEW,
) -> dict[str, Any]:
    """Why each stored copy of a server is (not) served: in the default view, and, for a
    named `view`, then in that view (an unknown view is a ConfigError, as `Config.view`)."""
    view_config = config.view(view)
    rules = compile_rules(config)
    order = [u.name for u in config.upstreams]
    decisions, _ = decide(entries, order, rules)
    by_id = {d.entry.id: d for d in decisions}
    named = None if view_config is None else NamedView(view_config.name, compile_view(view_config))
    in_view = {} if named is None else {d.entry.id: d for d in derive(decisions, named)[0]}
    upstreams: list[dict[str, Any]] = []
    for upstream in order + sorted({e.upstream for e in entries} - set(order)):
        held = [e for e in entries if e.upstream == upstream]
        if version is not None:
            held = [e for e in held if e.version == version]
        if not held:
            continue
        copies = []
        for entry in sorted(held, key=lambda e: e.version):
            decision = by_id[entry.id]
            verdicts = []
            if upstream in rules:
                verdicts = _verdicts(candidate_of(entry), rules[upstream].rules)
            copy: dict[str, Any] = {
                "version": entry.version,
                "upstream_status": entry.status,
                "removed_at": entry.removed_at,
                "rules": verdicts,
                "served": decision.served,
                "served_status": decision.outcome.status
                if decision.served and decision.outcome
                else None,
                "is_latest": decision.is_latest,
                "reason": decision.reason,
            }
            if named is not None:
                copy["in_view"] = _in_view(decision, in_view[entry.id], named)
            copies.append(copy)
        upstreams.append({"upstream": upstream, "versions": copies})
    return {
        "name": entries[0].name if entries else None,
        "version": version,
        "view": view,
        "upstreams": upstreams,
    }


def render(report: dict[str, Any], served: dict[str, Any] | None) -> str:
    """The report as text; `served` is the served form (in the report's view), if any."""
    view = report.get("view", DEFAULT_VIEW)
    title = f"{report['name']}" + (f" {report['version']}" if report["version"] else "")
    lines = [title + (f" (view {view})" if view != DEFAULT_VIEW else "")]
    label = "default view: " if view != DEFAULT_VIEW else ""
    for block in report["upstreams"]:
        lines.append(f"upstream {block['upstream']}:")
        for copy in block["versions"]:
            state = "SERVED" if copy["served"] else "not served"
            extra = ", latest" if copy["is_latest"] else ""
            status = copy["served_status"] or copy["upstream_status"]
            lines.append(
                f"  {copy['version']}: {label}{state} ({status}{extra}) - {copy['reason']}"
            )
            for verdict in copy["rules"]:
                reason = f": {verdict['reason']}" if "reason" in verdict else ""
                lines.append(f"      {verdict['rule']}: {verdict['verdict']}{reason}")
            own = copy.get("in_view")
            if own is not None:
                state = "SERVED" if own["served"] else "not served"
                extra = ", latest" if own["is_latest"] else ""
                status = f" ({own['served_status']}{extra})" if own["served_status"] else ""
                lines.append(f"    in view {own['view']}: {state}{status} - {own['reason']}")
                for verdict in own["rules"]:
                    reason = f": {verdict['reason']}" if "reason" in verdict else ""
                    lines.append(f"      {verdict['rule']}: {verdict['verdict']}{reason}")
    if served is not None:
        lines.append("served form:")
        lines.append(json.dumps(served, indent=2, ensure_ascii=False))
    return "\n".join(lines)
