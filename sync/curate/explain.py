"""`subregistry explain`: every rule's verdict on every stored copy of a server, and why the
mirror serves what it serves. Pure: it takes stored entries and returns a report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sync.config import Config
from sync.curate.rules import compile_rules
from sync.curate.view import candidate_of, decide
from sync.model import StoredEntry

__all__ = ["explain", "render"]


def explain(config: Config, entries: Sequence[StoredEntry], version: str | None) -> dict[str, Any]:
    rules = compile_rules(config)
    order = [u.name for u in config.upstreams]
    decisions, _ = decide(entries, order, rules)
    by_id = {d.entry.id: d for d in decisions}
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
                candidate = candidate_of(entry)
                for rule_name, rule in rules[upstream].rules:
                    effect = rule(candidate)
                    if effect is None:
                        verdicts.append({"rule": rule_name, "verdict": "no objection"})
                    else:
                        verdict = (
                            "drop"
                            if effect.drop
                            else ("change status" if effect.status else "enrich")
                        )
                        verdicts.append(
                            {"rule": rule_name, "verdict": verdict, "reason": effect.reason}
                        )
            copies.append(
                {
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
            )
        upstreams.append({"upstream": upstream, "versions": copies})
    return {
        "name": entries[0].name if entries else None,
        "version": version,
        "upstreams": upstreams,
    }


def render(report: dict[str, Any], served: dict[str, Any] | None) -> str:
    lines = [f"{report['name']}" + (f" {report['version']}" if report["version"] else "")]
    for block in report["upstreams"]:
        lines.append(f"upstream {block['upstream']}:")
        for copy in block["versions"]:
            state = "SERVED" if copy["served"] else "not served"
            extra = ", latest" if copy["is_latest"] else ""
            status = copy["served_status"] or copy["upstream_status"]
            lines.append(f"  {copy['version']}: {state} ({status}{extra}) - {copy['reason']}")
            for verdict in copy["rules"]:
                reason = f": {verdict['reason']}" if "reason" in verdict else ""
                lines.append(f"      {verdict['rule']}: {verdict['verdict']}{reason}")
    if served is not None:
        lines.append("served form:")
        lines.append(json.dumps(served, indent=2, ensure_ascii=False))
    return "\n".join(lines)
