"""The served view, computed: ownership, rules, version caps, latest, and the served `_meta`.

Pure functions over the stored entries of a few names. The engine builds the names a page
touched (`sync.curate.views.build_views`, which derives every named view from these decisions;
`reapply` walks every name in batches); the store then writes only the rows whose served form
changed, so the mirror's `updatedAt` moves exactly when a client would see a difference. A row
served once and no longer allowed becomes a tombstone (status `deleted`, the reason under the
mirror's key) so that downstream mirrors learn of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring as quote
from typing import Any, NamedTuple

from sync.curate.rules import Candidate, Outcome, RuleSet, evaluate
from sync.curate.versions import latest_of, parse_timestamp, version_key
from sync.model import OFFICIAL, ExistingServed, ServedRow, StoredEntry

__all__ = [
    "Build",
    "EntryDecision",
    "Kept",
    "Rendered",
    "assemble",
    "candidate_of",
    "decide",
    "existing_by_name",
    "finish",
    "group",
    "served_row",
    "tombstone",
]

STAMP = "{stamp}"


class EntryDecision(NamedTuple):
    """Why one stored entry is, or is not, served."""

    entry: StoredEntry
    outcome: Outcome | None
    served: bool
    reason: str
    is_latest: bool = False


# Rows rendered for one name, by (entry id, id of the outcome, is_latest): only valid while
# those outcomes live, so kept for one name at a time.
# Rows rendered for one name, by (entry id, outcome identity, latest). The value holds the
# outcome itself: alive, its identity cannot pass to another view's outcome, as the address of
# a freed one would.
Rendered = dict[tuple[int, int, bool], tuple[Outcome, ServedRow]]


@dataclass(slots=True)
class Build:
    rows: list[ServedRow] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)
    changed: int = 0


class Kept(NamedTuple):
    """Adapter giving latest_of the served status rather than the upstream one."""

    entry: StoredEntry
    outcome: Outcome

    @property
    def version(self) -> str:
        return self.entry.version

    @property
    def published_at(self) -> str | None:
        return self.entry.published_at or self.entry.first_seen_at

    @property
    def status(self) -> str:
        return self.outcome.status


def candidate_of(entry: StoredEntry) -> Candidate:
    """What the rules see of a stored entry."""
    return Candidate(
        entry.upstream,
        entry.name,
        entry.version,
        entry.status,
        entry.status_message,
        entry.description,
        entry.server,
    )


def decide(
    entries: Sequence[StoredEntry], order: Sequence[str], rules: Mapping[str, RuleSet]
) -> tuple[list[EntryDecision], Counter[str]]:
    """Every stored entry of one name, with its verdict; precedence follows `order`."""
    hits: Counter[str] = Counter()
    rank = {name: i for i, name in enumerate(order)}
    known = [e for e in entries if e.upstream in rank]
    holders = sorted({e.upstream for e in known if e.removed_at is None}, key=rank.__getitem__)
    owner = holders[0] if holders else None
    decisions: list[EntryDecision] = []
    kept: list[Kept] = []
    for entry in sorted(entries, key=lambda e: (rank.get(e.upstream, len(rank)), e.version)):
        if entry.upstream not in rank:
            reason = f"upstream {entry.upstream!r} is no longer configured"
            decisions.append(EntryDecision(entry, None, False, reason))
        elif entry.upstream != owner:
            reason = (
                f"shadowed: the name belongs to upstream {owner!r}, which comes first"
                if owner
                else "removed upstream"
            )
            decisions.append(EntryDecision(entry, None, False, reason))
        elif entry.removed_at is not None:
            reason = f"removed: upstream no longer lists it (since {entry.removed_at})"
            decisions.append(EntryDecision(entry, None, False, reason))
        else:
            candidate = candidate_of(entry)
            ruleset = rules[entry.upstream]
            outcome = evaluate(candidate, ruleset.rules)
            for effect in outcome.effects:  # most entries have none: no generator
                hits[effect.rule] += 1
            if outcome.kept:
                kept.append(Kept(entry, outcome))
            else:
                decisions.append(EntryDecision(entry, outcome, False, outcome.effects[-1].reason))
    caps = rules[owner].latest_versions if owner is not None else ()
    finish(kept, caps, decisions, hits, named=False)
    return decisions, hits


def finish(
    kept: list[Kept],
    caps: Sequence[tuple[str, int]],
    decisions: list[EntryDecision],
    hits: Counter[str],
    *,
    named: bool,
) -> None:
    """The versions of one name a view keeps after its caps, and which of them is latest,
    appended to `decisions`; a named view's reasons carry the rule that capped them."""
    for rule, cap in caps:
        newest = sorted(kept, key=lambda s: version_key(s.version, s.published_at))[-cap:]
        keep = {id(s) for s in newest}  # by identity: a name may have 10,000 versions
        for dropped in [s for s in kept if id(s) not in keep]:
            hits[rule] += 1
            reason = f"not among the {cap} newest versions"
            reason = f"{rule}: {reason}" if named else reason
            decisions.append(EntryDecision(dropped.entry, dropped.outcome, False, reason))
        kept = newest
    latest = latest_of(kept)
    for served in kept:
        is_latest = served is latest
        decisions.append(EntryDecision(served.entry, served.outcome, True, "served", is_latest))


def group(
    entries: Iterable[StoredEntry],
) -> tuple[dict[str, list[StoredEntry]], dict[int, StoredEntry]]:
    """Entries by name, and by id (a tombstone is rendered from the entry it withdraws)."""
    by_name: dict[str, list[StoredEntry]] = defaultdict(list)
    by_id: dict[int, StoredEntry] = {}
    for entry in entries:
        by_name[entry.name].append(entry)
        by_id[entry.id] = entry
    return by_name, by_id


def existing_by_name(
    existing: Mapping[tuple[str, str], ExistingServed],
) -> defaultdict[str, list[tuple[str, ExistingServed]]]:
    before: defaultdict[str, list[tuple[str, ExistingServed]]] = defaultdict(list)
    for (row_name, version), row in existing.items():
        before[row_name].append((version, row))
    return before


def assemble(
    decisions: Iterable[EntryDecision],
    before: Iterable[tuple[str, ExistingServed]],
    by_id: Mapping[int, StoredEntry],
    namespace: str,
    result: Build,
    rendered: Rendered | None = None,
) -> None:
    """One name's rows in one view: its served versions, and a tombstone for each version the
    view served before and no longer does (with the reason it left). A row another view of
    the name already rendered from the same outcome, equally latest, is reused from
    `rendered`: a view whose rules leave a row as the default serves it costs no rendering."""
    served_keys = set()
    reasons: dict[int, str] = {}
    for d in decisions:
        if d.served and d.outcome is not None:
            served_keys.add(d.entry.version)
            if rendered is None:
                result.rows.append(served_row(d.entry, d.outcome, d.is_latest, namespace))
                continue
            key = (d.entry.id, id(d.outcome), d.is_latest)
            shared = rendered.get(key)
            if shared is None or shared[0] is not d.outcome:
                fresh = served_row(d.entry, d.outcome, d.is_latest, namespace)
                shared = rendered[key] = (d.outcome, fresh)
            result.rows.append(shared[1])
        else:
            reasons[d.entry.id] = d.reason
    for version, row in before:
        if version in served_keys:
            continue
        withdrawn = by_id.get(row.entry_id)
        if withdrawn is None:
            continue
        reason = reasons.get(withdrawn.id, "no longer served")
        result.rows.append(tombstone(withdrawn, reason, namespace))


@functools.lru_cache(maxsize=4096)
def _passthrough(meta: str | None, namespace: str) -> str:
    """Response-level `_meta` keys of other registries travel on untouched: their JSON
    members, rendered once per entry however many views serve it (a view's rows are built
    right after the default's, so the cache holds them)."""
    if not meta:
        return ""
    try:
        parsed = json.loads(meta)
    except ValueError:
        return ""
    if not isinstance(parsed, dict):
        return ""
    kept = {k: v for k, v in parsed.items() if k not in (OFFICIAL, namespace)}
    return _dumps(kept)[1:-1] if kept else ""


_RESERVED = frozenset({"upstream", "upstreamUpdatedAt", "syncedAt"})
_OFFICIAL_OPEN = "{" + quote(OFFICIAL) + ':{"status":'


def _render(
    entry: StoredEntry,
    status: str,
    message: str | None,
    is_latest: bool,
    namespace: str,
    extra: Mapping[str, Any],
) -> str:
    """The served `_meta`, concatenated from escaped pieces: this runs once per stored row
    on every full pass, where a general-purpose json.dumps of nested dicts costs double."""
    parts = [_OFFICIAL_OPEN, quote(status)]
    if message:
        parts += [',"statusMessage":', quote(message)]
    if entry.status_changed_at:
        parts += [',"statusChangedAt":', quote(entry.status_changed_at)]
    parts += [
        ',"publishedAt":',
        quote(entry.published_at or entry.first_seen_at),
        ',"updatedAt":"',
        STAMP,
        '","isLatest":',
        "true" if is_latest else "false",
        "}",
    ]
    passthrough = _passthrough(entry.meta, namespace)
    if passthrough:
        parts += [",", passthrough]
    parts += [",", quote(namespace), ":{"]
    own = {k: v for k, v in extra.items() if k not in _RESERVED}
    if own:
        parts += [_dumps(own)[1:-1], ","]
    parts += ['"upstream":', quote(entry.upstream)]
    if entry.upstream_updated_at:
        parts += [',"upstreamUpdatedAt":', quote(entry.upstream_updated_at)]
    parts += [',"syncedAt":', quote(entry.stored_at), "}}"]
    return "".join(parts)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _form(entry: StoredEntry, status: str, is_latest: bool, meta: str) -> bytes:
    text = f"{entry.id}\0{status}\0{int(is_latest)}\0{meta}"
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def served_row(entry: StoredEntry, outcome: Outcome, is_latest: bool, namespace: str) -> ServedRow:
    extra: dict[str, Any] = dict(outcome.meta)
    if outcome.decision is not None:
        extra["decision"] = outcome.decision
    meta = _render(entry, outcome.status, outcome.status_message, is_latest, namespace, extra)
    return ServedRow(
        entry.name,
        entry.version,
        entry.id,
        entry.upstream,
        outcome.status,
        is_latest,
        parse_timestamp(entry.published_at or entry.first_seen_at),
        entry.description,
        _form(entry, outcome.status, is_latest, meta),
        meta,
    )


def tombstone(entry: StoredEntry, reason: str, namespace: str) -> ServedRow:
    meta = _render(entry, "deleted", None, False, namespace, {"withdrawn": reason})
    return ServedRow(
        entry.name,
        entry.version,
        entry.id,
        entry.upstream,
        "deleted",
        False,
        parse_timestamp(entry.published_at or entry.first_seen_at),
        entry.description,
        _form(entry, "deleted", False, meta),
        meta,
    )
