"""Curation rules: small pure functions over one entry, each saying what it did and why.

A rule returns None when it has no opinion, or an Effect: drop the entry, change its served
status, or add facts under the mirror's `_meta` key. Rules run in configuration order: the
upstream's own filter, then the global filter, then enrichments, then overrides; the first
drop ends the evaluation (like structlog's DropEvent). Nothing here does I/O.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from sync.config import Config, EnrichRule, FilterConfig, OverrideRule, ViewConfig

__all__ = [
    "Candidate",
    "Effect",
    "Outcome",
    "Rule",
    "RuleSet",
    "compile_rules",
    "compile_view",
    "evaluate",
]


class Candidate:
    """What a rule may look at: the stored entry's facts, and its server.json on demand
    (parsed once, and only if a rule asks: most rule sets never do)."""

    __slots__ = (
        "_server",
        "description",
        "name",
        "server_text",
        "status",
        "status_message",
        "upstream",
        "version",
    )

    def __init__(
        self,
        upstream: str,
        name: str,
        version: str,
        status: str,
        status_message: str | None,
        description: str,
        server_text: str = "{}",
    ) -> None:
        self.upstream = upstream
        self.name = name
        self.version = version
        self.status = status
        self.status_message = status_message
        self.description = description
        self.server_text = server_text
        self._server: Mapping[str, Any] | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Candidate) and (
            self.upstream,
            self.name,
            self.version,
            self.status,
            self.server_text,
        ) == (other.upstream, other.name, other.version, other.status, other.server_text)

    __hash__ = None  # type: ignore[assignment]

    @property
    def server(self) -> Mapping[str, Any]:
        if self._server is None:
            value = json.loads(self.server_text)
            self._server = value if isinstance(value, dict) else {}
        return self._server

    def packages(self) -> list[Mapping[str, Any]]:
        items = self.server.get("packages")
        return [p for p in items if isinstance(p, dict)] if isinstance(items, list) else []

    def remotes(self) -> list[Mapping[str, Any]]:
        items = self.server.get("remotes")
        return [r for r in items if isinstance(r, dict)] if isinstance(items, list) else []


@dataclass(frozen=True, slots=True)
class Effect:
    rule: str
    reason: str
    drop: bool = False
    status: str | None = None
    status_message: str | None = None
    meta: Mapping[str, Any] | None = None


Rule = Callable[[Candidate], Effect | None]


class Outcome(NamedTuple):
    kept: bool
    status: str
    status_message: str | None
    meta: dict[str, Any]
    decision: dict[str, Any] | None
    effects: tuple[Effect, ...]


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The compiled rules for one upstream, plus the per-name version cap (a group rule)."""

    rules: tuple[tuple[str, Rule], ...]
    latest_versions: tuple[tuple[str, int], ...] = ()
    needs_server: bool = False  # whether any rule reads the server.json itself
    # How many leading rules read nothing but the name (include, exclude): their verdict holds
    # for every version of a name, so a view asks them once per name.
    by_name: int = 0


def evaluate(candidate: Candidate, rules: Sequence[tuple[str, Rule]]) -> Outcome:
    status, message = candidate.status, candidate.status_message
    meta: dict[str, Any] = {}
    decision: dict[str, Any] | None = None
    effects: list[Effect] = []
    for _, rule in rules:
        effect = rule(candidate)
        if effect is None:
            continue
        effects.append(effect)
        if effect.drop:
            return Outcome(False, status, message, meta, decision, tuple(effects))
        if effect.meta:
            meta.update(effect.meta)
        if effect.status is not None:
            decision = {
                "rule": effect.rule,
                "reason": effect.reason,
                "upstreamStatus": candidate.status,
                "status": effect.status,
            }
            status, message = effect.status, effect.status_message
    return Outcome(True, status, message, meta, decision, tuple(effects))


# --- rule constructors: each returns a pure function over one Candidate ---------------------


def _matcher(globs: Sequence[str]) -> Callable[[str], object]:
    """`fnmatchcase` against any of `globs`, as one compiled pattern: rules run once per
    stored version and view on every reapply, where matching glob by glob dominated."""
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs)).match


def _include(rule: str, globs: tuple[str, ...]) -> Rule:
    matches = _matcher(globs)

    def include(c: Candidate) -> Effect | None:
        if matches(c.name):
            return None
        return Effect(rule, f"name matches none of {list(globs)}", drop=True)

    return include


def _exclude(rule: str, globs: tuple[str, ...]) -> Rule:
    matches = _matcher(globs)

    def exclude(c: Candidate) -> Effect | None:
        if not matches(c.name):
            return None
        for glob in globs:  # which one, for the reason
            if fnmatchcase(c.name, glob):
                return Effect(rule, f"name matches {glob!r}", drop=True)
        return None

    return exclude


def _exclude_regex(rule: str, patterns: tuple[str, ...]) -> Rule:
    compiled = [re.compile(p) for p in patterns]

    def exclude_regex(c: Candidate) -> Effect | None:
        for pattern in compiled:
            for field_name, text in (("name", c.name), ("description", c.description)):
                if pattern.search(text):
                    return Effect(rule, f"{field_name} matches /{pattern.pattern}/", drop=True)
        return None

    return exclude_regex


def _statuses(rule: str, allowed: tuple[str, ...]) -> Rule:
    def statuses(c: Candidate) -> Effect | None:
        if c.status in allowed:
            return None
        return Effect(rule, f"status {c.status!r} is not in {list(allowed)}", drop=True)

    return statuses


def _kinds(rule: str, registry_types: tuple[str, ...] | None, remotes: bool) -> Rule:
    def kinds(c: Candidate) -> Effect | None:
        types = [str(p.get("registryType")) for p in c.packages()]
        package_ok = any(t in registry_types for t in types) if registry_types else bool(types)
        if package_ok or (remotes and c.remotes()):
            return None
        wanted = f"a package of type {list(registry_types)}" if registry_types else "a package"
        return Effect(
            rule, f"has {wanted}: no (types {types}); remote allowed: {remotes}", drop=True
        )

    return kinds


def _transports(rule: str, allowed: tuple[str, ...]) -> Rule:
    def transports(c: Candidate) -> Effect | None:
        found = [
            str(p["transport"].get("type"))
            for p in c.packages()
            if isinstance(p.get("transport"), dict)
        ] + [str(r.get("type")) for r in c.remotes()]
        if any(t in allowed for t in found):
            return None
        return Effect(rule, f"transports {found} include none of {list(allowed)}", drop=True)

    return transports


def _enrich(rule: str, spec: EnrichRule) -> Rule:
    matches = _matcher((spec.match,))

    def enrich(c: Candidate) -> Effect | None:
        if not matches(c.name):
            return None
        return Effect(rule, f"name matches {spec.match!r}", meta=spec.meta)

    return enrich


def _override(rule: str, spec: OverrideRule) -> Rule:
    matches = _matcher((spec.name,))

    def override(c: Candidate) -> Effect | None:
        if not matches(c.name):
            return None
        if spec.version is not None and c.version != spec.version:
            return None
        if spec.status is None:
            return None
        return Effect(
            rule,
            spec.status_message or f"status set to {spec.status} by the mirror",
            status=spec.status,
            status_message=spec.status_message,
        )

    return override


def _filter_rules(prefix: str, spec: FilterConfig) -> list[tuple[str, Rule]]:
    rules: list[tuple[str, Rule]] = []
    if spec.include:
        rules.append((f"{prefix}include", _include(f"{prefix}include", spec.include)))
    if spec.exclude:
        rules.append((f"{prefix}exclude", _exclude(f"{prefix}exclude", spec.exclude)))
    if spec.exclude_regex:
        name = f"{prefix}exclude_regex"
        rules.append((name, _exclude_regex(name, spec.exclude_regex)))
    if set(spec.statuses) != {"active", "deprecated", "deleted"}:
        rules.append((f"{prefix}statuses", _statuses(f"{prefix}statuses", spec.statuses)))
    if spec.registry_types is not None or not spec.remotes:
        name = f"{prefix}registry_types"
        rules.append((name, _kinds(name, spec.registry_types, spec.remotes)))
    if spec.transports is not None:
        rules.append((f"{prefix}transports", _transports(f"{prefix}transports", spec.transports)))
    return rules


def _reads_server(rules: Sequence[tuple[str, Rule]]) -> bool:
    return any(name.endswith(("registry_types", "transports")) for name, _ in rules)


def _rule_list(
    prefix: str, spec: FilterConfig, enrich: Sequence[EnrichRule], override: Sequence[OverrideRule]
) -> list[tuple[str, Rule]]:
    """A filter, enrichments and overrides, in that order, named under `prefix`."""
    rules = _filter_rules(f"{prefix}filter.", spec)
    rules += [
        (f"{prefix}enrich[{i}]", _enrich(f"{prefix}enrich[{i}]", e)) for i, e in enumerate(enrich)
    ]
    rules += [
        (f"{prefix}override[{i}]", _override(f"{prefix}override[{i}]", o))
        for i, o in enumerate(override)
    ]
    return rules


def compile_view(view: ViewConfig) -> RuleSet:
    """A named view's own rules (named `views.<name>.…`), run on top of the default view's
    outcome; its `latest_versions` caps what they keep."""
    prefix = f"views.{view.name}."
    rules = _rule_list(prefix, view.filter, view.enrich, view.override)
    caps: tuple[tuple[str, int], ...] = ()
    if view.filter.latest_versions:
        caps = ((f"{prefix}filter.latest_versions", view.filter.latest_versions),)
    by_name = 0
    for name, _ in rules:
        if not name.endswith(("filter.include", "filter.exclude")):
            break
        by_name += 1
    return RuleSet(tuple(rules), caps, _reads_server(rules), by_name)


def compile_rules(config: Config) -> dict[str, RuleSet]:
    """One RuleSet per upstream: its own filter first, then the global rules."""
    shared = _rule_list("", config.filter, config.enrich, config.override)
    sets: dict[str, RuleSet] = {}
    for upstream in config.upstreams:
        own: list[tuple[str, Rule]] = []
        caps: list[tuple[str, int]] = []
        if upstream.filter is not None:
            prefix = f"upstreams.{upstream.name}.filter."
            own = _filter_rules(prefix, upstream.filter)
            if upstream.filter.latest_versions:
                caps.append((f"{prefix}latest_versions", upstream.filter.latest_versions))
        if config.filter.latest_versions:
            caps.append(("filter.latest_versions", config.filter.latest_versions))
        chosen = own + shared
        sets[upstream.name] = RuleSet(tuple(chosen), tuple(caps), _reads_server(chosen))
    return sets
