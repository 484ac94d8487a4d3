"""A running daemon takes a new configuration (SIGHUP), or keeps the one it has.

Upstreams, rules, intervals and logging change in place: a running pass finishes its listing
with the settings it started with (its committed pages are never undone), later passes and the
scheduler follow the new file, and a rule change triggers the same reapply as at start. A file
that does not load is refused with its message, and the daemon goes on with the old one.
Views and who may read them (`[[views]]`, `[api.auth]` with its tokens read again,
`[api] public_url`) change at once: the API looks them up per request. The rest of `[storage]`
and `[api]` (the database, the listening socket) needs a restart: a reload keeps it as it was
and says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import web

from sync.config import DEFAULT_VIEW, Config
from sync.curate.curation import rules_digest, view_digest
from sync.errors import ConfigError
from sync.leading import WRITING, schedule
from sync.logs import configure_logging
from sync.serve.api import CLOCK, LIVE

__all__ = ["RELOADING", "reload", "schedule", "unsettled_views"]

log = structlog.get_logger("sync.reload")
RELOADING = web.AppKey("reloading", asyncio.Lock)
RESTART_ONLY = ("storage", "api")
# `[api]` keys the API reads per request, from the configuration in force.
API_LIVE = ("auth", "public_url")


def settle(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The configuration to apply, and the sections a reload cannot change (kept as were,
    but for the `[api]` keys that apply at once)."""
    live = {key: getattr(new.api, key) for key in API_LIVE}
    old_api = old.api.model_copy(update=live)
    kept = [
        section
        for section in RESTART_ONLY
        if (old_api if section == "api" else getattr(old, section)) != getattr(new, section)
    ]
    if kept:
        update = {section: getattr(old, section) for section in kept}
        if "api" in update:
            update["api"] = old_api
        new = new.model_copy(update=update)
    # The file was checked against its own `api.base_path`; the one kept must be free too.
    shadowed = [v.name for v in new.views if v.base_path == new.api.base_path]
    if shadowed:
        raise ConfigError(
            f"views[{shadowed[0]}].base_path is the default view's base path "
            f"{new.api.base_path or '/'!r}, which changes only with a restart"
        )
    return new, kept


async def reload(app: web.Application, load: Callable[[], Config]) -> bool:
    """Load the configuration again and apply it; False (and the old one kept) if it fails."""
    async with app[RELOADING]:
        try:
            fresh, kept = settle(app[LIVE].config, load())
        except ConfigError as exc:
            log.error("config.reload_refused", error=str(exc), keeping="the running configuration")
            return False
        try:
            await _apply(app, fresh, kept)
        except Exception:
            # The task's outcome must be seen; what applied stays applied (a reapply that
            # failed runs again at the next start, as the stored rules digest tells).
            log.exception("config.reload_failed")
            return False
        return True


async def _apply(app: web.Application, fresh: Config, kept: list[str]) -> None:
    live = app[LIVE]
    if kept:
        log.warning("config.reload_needs_restart", sections=kept, keeping="their old values")
    configure_logging(fresh.logging)
    old = live.config
    changed = [key for key in Config.model_fields if getattr(old, key) != getattr(fresh, key)]
    unsettled = unsettled_views(old, fresh)
    live.settling = unsettled
    try:
        live.config = fresh
        log.info("config.reloaded", changed=changed)
        if not await _reapply(app, fresh) and unsettled:
            log.warning(
                "config.reload_auth_with_rules",
                views=sorted(unsettled),
                detail="until the writer re-evaluates them, these views' new readers see rows "
                "of their old rules: change a view's rules and its auth in separate reloads",
            )
    finally:
        live.settling = frozenset()


async def _reapply(app: web.Application, fresh: Config) -> bool:
    """Give the writer the new configuration; True if this process re-evaluated the views."""
    writing = app.get(WRITING)
    if writing is None:
        return False
    # Under the lock: on PostgreSQL the engine comes and goes with the leadership; a process
    # elected later starts with `live.config`, set above.
    async with writing.lock:
        engine, scheduler = writing.engine, writing.scheduler
        if engine is None or scheduler is None:
            return False
        engine.reconfigure(fresh)
        schedule(scheduler, engine, fresh, app[CLOCK]())
        await engine.curator.ensure_current()
        return True


def unsettled_views(old: Config, new: Config) -> frozenset[str]:
    """The views whose auth and rules both change: served in between, their new readers would
    see what their old rules let through (a view narrowed as it opens would show its old,
    private rows to anyone)."""

    def forms(config: Config) -> dict[str, tuple[object, str]]:
        found: dict[str, tuple[object, str]] = {
            DEFAULT_VIEW: (config.api.auth, rules_digest(config))
        }
        for view in config.views:
            found[view.name] = (view.auth, view_digest(config, view))
        return found

    before, after = forms(old), forms(new)
    return frozenset(
        name
        for name, (auth, digest) in after.items()
        if name in before and before[name][0] != auth and before[name][1] != digest
    )
