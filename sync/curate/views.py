"""Named views, computed: each one a subset of the default view, derived from its decisions.

A named view never looks at the stored entries on its own: it starts from what the default
view serves of a name (the status after the global overrides, the enrichment included), runs
its own rules on top, caps the versions left and recomputes `isLatest` among them. So one
`decide` per name feeds every view, and no view can serve what the global rules refuse.
Pure functions: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sync.config import DEFAULT_VIEW
from sync.curate.rules import Candidate, Effect, Outcome, Rule, RuleSet, evaluate
from sync.curate.view import (
    Build,
    EntryDecision,
    Kept,
    Rendered,
    assemble,
    decide,
    existing_by_name,
    finish,
    group,
)
from sync.model import ExistingServed, StoredEntry

__all__ = ["NamedView", "build_views", "derive", "on_top"]

Existing = Mapping[tuple[str, str], ExistingServed]


@dataclass(frozen=True, slots=True)
class NamedView:
    """A named view's compiled rules (`sync.curate.rules.compile_view`)."""

    name: str
    rules: RuleSet


def on_top(entry: StoredEntry, base: Outcome, rules: Sequence[tuple[str, Rule]]) -> Outcome:
    """A view's rules over one entry as the default view serves it. The enrichment merges
    default-then-view; the view's own status decision, if any, wins over the default's.
    `base` itself when no rule of the view acted (so its rendered row can be shared)."""
    candidate = Candidate(
        entry.upstream,
        entry.name,
        entry.version,
        base.status,
        base.status_message,
        entry.description,
        entry.server,
    )
    own = evaluate(candidate, rules)
    if not own.effects:
        return base
    if not own.kept:
        return own
    meta: dict[str, Any] = {**base.meta, **own.meta}
    decision = base.decision
    if own.decision is not None:
        # What the upstream said, not the default view's status: the key's meaning is fixed.
        decision = {**own.decision, "upstreamStatus": entry.status}
    return Outcome(True, own.status, own.status_message, meta, decision, own.effects)


def _by_name(decisions: Sequence[EntryDecision], rules: RuleSet) -> Effect | None:
    """The drop, if any, of the view's leading name-only rules: one verdict for the name."""
    first = next((d for d in decisions if d.served and d.outcome is not None), None)
    if first is None or not rules.by_name:
        return None
    candidate = Candidate(first.entry.upstream, first.entry.name, "", "", None, "")
    for _, rule in rules.rules[: rules.by_name]:
        effect = rule(candidate)
        if effect is not None:
            return effect
    return None


def derive(
    decisions: Sequence[EntryDecision], view: NamedView
) -> tuple[list[EntryDecision], Counter[str]]:
    """A view's verdict on every entry of one name, from the default view's `decide`."""
    hits: Counter[str] = Counter()
    result: list[EntryDecision] = []
    kept: list[Kept] = []
    dropped_name = _by_name(decisions, view.rules)
    rest = view.rules.rules[view.rules.by_name :]
    for d in decisions:
        if not d.served or d.outcome is None:
            reason = f"not served by the default view: {d.reason}"
            result.append(EntryDecision(d.entry, None, False, reason))
            continue
        if dropped_name is not None:
            hits[dropped_name.rule] += 1
            outcome = Outcome(False, d.outcome.status, None, {}, None, (dropped_name,))
            reason = f"{dropped_name.rule}: {dropped_name.reason}"
            result.append(EntryDecision(d.entry, outcome, False, reason))
            continue
        outcome = on_top(d.entry, d.outcome, rest)
        if outcome is not d.outcome:  # the default's own effects are not this view's
            for effect in outcome.effects:
                hits[effect.rule] += 1
        if outcome.kept:
            kept.append(Kept(d.entry, outcome))
        else:
            last = outcome.effects[-1]
            result.append(EntryDecision(d.entry, outcome, False, f"{last.rule}: {last.reason}"))
    finish(kept, view.rules.latest_versions, result, hits, named=True)
    return result, hits


def build_views(
    entries: Iterable[StoredEntry],
    order: Sequence[str],
    rules: Mapping[str, RuleSet],
    views: Sequence[NamedView],
    namespace: str,
    existing: Mapping[str, Existing],
    targets: Collection[str],
) -> dict[str, Build]:
    """Served rows (and tombstones) of every view in `targets` for every name among
    `entries`: the default view's decisions are made once per name, whichever views are built
    (a named view is derived from them even when the default's rows are not rewritten)."""
    by_name, by_id = group(entries)
    chosen = [view for view in views if view.name in targets]
    names = ([DEFAULT_VIEW] if DEFAULT_VIEW in targets else []) + [v.name for v in chosen]
    before = {view: existing_by_name(existing.get(view, {})) for view in names}
    results = {view: Build() for view in names}
    for name, entries_of_name in by_name.items():
        decisions, hits = decide(entries_of_name, order, rules)
        rendered: Rendered = {}  # per name: keyed by the identity of its live outcomes
        if DEFAULT_VIEW in results:
            if hits:
                results[DEFAULT_VIEW].hits.update(hits)
            assemble(
                decisions,
                before[DEFAULT_VIEW][name],
                by_id,
                namespace,
                results[DEFAULT_VIEW],
                rendered,
            )
        for view in chosen:
            derived, view_hits = derive(decisions, view)
            if view_hits:
                results[view.name].hits.update(view_hits)
            assemble(
                derived, before[view.name][name], by_id, namespace, results[view.name], rendered
            )
    return results
