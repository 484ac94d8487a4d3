"""Applying the rules: rebuild the served rows of some names, or of the whole catalogue,
in the default view and every named view.

The engine calls `rebuild` for the names each page touched, inside that page's transaction:
their entries are read once and every view is rebuilt from them. `reapply` walks every stored
name in bounded batches without fetching anything, for the views given; `ensure_current` runs
it at start-up and on reload for exactly the views whose rules changed since they were built,
and drops the views no longer configured.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Iterable, Mapping

import structlog

from sync.config import DEFAULT_VIEW, Config, ViewConfig
from sync.curate.rules import compile_rules, compile_view
from sync.curate.view import Build
from sync.curate.views import NamedView, build_views
from sync.metrics import Metrics
from sync.store import Store

__all__ = ["Curator", "rules_digest", "view_digest"]

log = structlog.get_logger("sync.curate.curation")
_BATCH = 500
_DIGEST = "rules_digest:"


def rules_digest(config: Config) -> str:
    """Everything that decides the served form: rules, upstream order, namespace."""
    relevant = {
        "order": [u.name for u in config.upstreams],
        "upstream_filters": {
            u.name: u.filter.model_dump(mode="json") if u.filter else None for u in config.upstreams
        },
        "filter": config.filter.model_dump(mode="json"),
        "enrich": [e.model_dump(mode="json") for e in config.enrich],
        "override": [o.model_dump(mode="json") for o in config.override],
        "namespace": config.mirror.namespace,
    }
    text = json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def view_digest(config: Config, view: ViewConfig) -> str:
    """A named view's served form depends on the global rules and its own (not on its path,
    description or auth, which a reader sees elsewhere)."""
    relevant = {
        "default": rules_digest(config),
        "view": view.model_dump(mode="json", include={"filter", "enrich", "override"}),
    }
    text = json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _key(view: str) -> str:
    return f"{_DIGEST}{view}"


class Curator:
    """Keeps every served view (the default one and each `[[views]]` entry) in line with the
    stored entries and the rules."""

    def __init__(self, config: Config, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take new rules in place: a pass holding this curator decides its next page by
        them, and a reapply (ensure_current) brings every stored name in line."""
        self.config = config
        self.rules = compile_rules(config)
        self.views = [NamedView(v.name, compile_view(v)) for v in config.views]
        self.order = [u.name for u in config.upstreams]
        self.digests = {DEFAULT_VIEW: rules_digest(config)}
        self.digests.update((v.name, view_digest(config, v)) for v in config.views)
        self.needs_server = any(r.needs_server for r in self.rules.values()) or any(
            v.rules.needs_server for v in self.views
        )

    async def rebuild(
        self, names: Iterable[str], views: Collection[str] | None = None
    ) -> dict[str, Build]:
        """Recompute the served rows of `names` in `views` (default: every configured view),
        reading their entries once; call inside a transaction."""
        names = set(names)
        targets = list(self.digests) if views is None else [v for v in self.digests if v in views]
        if not names or not targets:
            return {}
        entries = await self.store.entries_for(names, with_server=self.needs_server)
        existing = await self.store.served_states(targets, names)
        built = build_views(
            entries,
            self.order,
            self.rules,
            self.views,
            self.config.mirror.namespace,
            existing,
            targets,
        )
        for view, result in built.items():
            result.changed = await self.store.write_served(view, result.rows, existing[view])
            await self.store.add_rule_hits(view, result.hits)
            for rule, hits in result.hits.items():
                self.metrics.rule_hits.labels(view, rule).inc(hits)
        return built

    async def reapply(self, views: Collection[str] | None = None) -> tuple[int, int]:
        """Re-evaluate every stored entry in `views` (default: every view, and the views no
        longer configured are dropped), in one walk over the stored names that writes only
        those views; return (names evaluated, rows changed)."""
        started = time.perf_counter()
        targets = list(self.digests) if views is None else [v for v in self.digests if v in views]
        names_seen = changed = 0
        async with self.store.transaction():
            if views is None:
                await self._drop_removed(await self._stored_digests())
            for view in targets:
                await self.store.reset_rule_hits(view)
                # Until the walk ends the view is neither the old rules' nor the new ones':
                # an empty digest makes the next start finish it (or drop it, if removed).
                await self.store.set_setting(_key(view), "")
        after = ""
        while True:
            async with self.store.transaction():
                names = await self.store.names_after(after, _BATCH)
                if not names:
                    for view in targets:
                        await self.store.set_setting(_key(view), self.digests[view])
                    await self.store.rebuild_search_index()
                    break
                built = await self.rebuild(names, targets)
            names_seen += len(names)
            changed += sum(result.changed for result in built.values())
            after = names[-1]
        log.info(
            "curation.reapplied",
            views=targets,
            names=names_seen,
            changed=changed,
            duration_s=round(time.perf_counter() - started, 3),
        )
        return names_seen, changed

    async def ensure_current(self) -> bool:
        """Bring the served views in line with the rules, without fetching anything: drop the
        views no longer configured, and reapply exactly the views whose rules digest changed
        (a view added has none yet). True if anything ran."""
        async with self.store.transaction():
            stored = await self._stored_digests()
            removed = await self._drop_removed(stored)
            if not await self.store.names_after("", 1):
                for view, digest in self.digests.items():
                    await self.store.set_setting(_key(view), digest)
                return bool(removed)
        changed = [view for view, digest in self.digests.items() if stored.get(view) != digest]
        if not changed:
            return bool(removed)
        log.info(
            "curation.rules_changed",
            views=changed,
            previous={view: stored.get(view) for view in changed},
        )
        await self.reapply(changed)
        return True

    async def _stored_digests(self) -> dict[str, str]:
        found = await self.store.settings_under(_DIGEST)
        return {key.removeprefix(_DIGEST): value for key, value in found.items()}

    async def _drop_removed(self, stored: Mapping[str, str]) -> list[str]:
        """Forget the views that have a stored digest but no configuration any more (a reapply
        stores a view's digest, empty, before it writes the view's first row)."""
        removed = sorted(set(stored) - set(self.digests) - {DEFAULT_VIEW})
        for view in removed:
            dropped = await self.store.drop_view(view)
            log.info("curation.view_dropped", view=view, rows=dropped)
        return removed
