"""Applying the rules: rebuild the served rows of some names, or of the whole catalogue.

The engine calls `rebuild` for the names each page touched, inside that page's transaction.
`reapply` walks every stored name in bounded batches without fetching anything, and runs by
itself at start-up when the rules changed since the served view was last built.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable

import structlog

from sync.config import DEFAULT_VIEW, Config
from sync.curate.rules import compile_rules
from sync.curate.view import Build, build
from sync.metrics import Metrics
from sync.store import Store

__all__ = ["Curator", "rules_digest"]

log = structlog.get_logger("sync.curate.curation")
_BATCH = 500


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


class Curator:
    def __init__(
        self, config: Config, store: Store, metrics: Metrics, *, view: str = DEFAULT_VIEW
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.view = view
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take new rules in place: a pass holding this curator decides its next page by
        them, and a reapply (ensure_current) brings every stored name in line."""
        self.config = config
        self.rules = compile_rules(config)
        self.order = [u.name for u in config.upstreams]
        self.digest = rules_digest(config)
        self.needs_server = any(r.needs_server for r in self.rules.values())

    async def rebuild(self, names: Iterable[str]) -> Build:
        """Recompute the served rows of `names`; call inside a transaction."""
        names = set(names)
        if not names:
            return Build()
        entries = await self.store.entries_for(names, with_server=self.needs_server)
        existing = await self.store.served_state(self.view, names)
        built = build(entries, self.order, self.rules, self.config.mirror.namespace, existing)
        built.changed = await self.store.write_served(self.view, built.rows, existing)
        await self.store.add_rule_hits(self.view, built.hits)
        for rule, hits in built.hits.items():
            self.metrics.rule_hits.labels(self.view, rule).inc(hits)
        return built

    async def reapply(self) -> tuple[int, int]:
        """Re-evaluate every stored entry; return (names evaluated, rows changed)."""
        started = time.perf_counter()
        names_seen = changed = 0
        async with self.store.transaction():
            await self.store.reset_rule_hits(self.view)
        after = ""
        while True:
            async with self.store.transaction():
                names = await self.store.names_after(after, _BATCH)
                if not names:
                    await self.store.set_setting(f"rules_digest:{self.view}", self.digest)
                    await self.store.rebuild_search_index()
                    break
                built = await self.rebuild(names)
            names_seen += len(names)
            changed += built.changed
            after = names[-1]
        log.info(
            "curation.reapplied",
            names=names_seen,
            changed=changed,
            duration_s=round(time.perf_counter() - started, 3),
        )
        return names_seen, changed

    async def ensure_current(self) -> bool:
        """Reapply if the rules changed since the served view was built; True if it ran."""
        async with self.store.transaction():
            stored = await self.store.setting(f"rules_digest:{self.view}")
            if stored is None and not await self.store.names_after("", 1):
                await self.store.set_setting(f"rules_digest:{self.view}", self.digest)
                return False
        if stored == self.digest:
            return False
        log.info("curation.rules_changed", previous=stored, current=self.digest)
        await self.reapply()
        return True
