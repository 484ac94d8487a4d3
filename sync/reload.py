"""A running daemon takes a new configuration (SIGHUP), or keeps the one it has.

Upstreams, rules, intervals and logging change in place: a running pass finishes its listing
with the settings it started with (its committed pages are never undone), later passes and the
scheduler follow the new file, and a rule change triggers the same reapply as at start. A file
that does not load is refused with its message, and the daemon goes on with the old one.
`[storage]` and `[api]` (the database, the listening socket) need a restart: a reload keeps
them as they were and says so.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from sync.config import Config
from sync.errors import ConfigError
from sync.logs import configure_logging
from sync.pull.engine import Engine
from sync.serve.api import CLOCK, LIVE

__all__ = ["ENGINE", "RELOADING", "SCHEDULER", "reload", "schedule"]

log = structlog.get_logger("sync.reload")
ENGINE = web.AppKey("engine", Engine)
SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)
RELOADING = web.AppKey("reloading", asyncio.Lock)
RESTART_ONLY = ("storage", "api")


def schedule(scheduler: AsyncIOScheduler, engine: Engine, config: Config, now: datetime) -> None:
    """One job per configured upstream: added (its first pass at once), re-timed when its
    interval changed, removed with its upstream."""
    wanted = {u.name for u in config.upstreams}
    for job in scheduler.get_jobs():
        if job.id not in wanted:
            job.remove()
    for i, upstream in enumerate(config.upstreams):
        jitter = min(upstream.interval * 0.1, 300.0)
        trigger = IntervalTrigger(seconds=upstream.interval, jitter=jitter)
        job = scheduler.get_job(upstream.name)
        if job is None:
            scheduler.add_job(
                engine.run,
                trigger,
                args=[upstream.name],
                id=upstream.name,
                name=f"sync {upstream.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                # First passes start at once, spread a little so upstreams do not start together.
                next_run_time=now + timedelta(seconds=i * 2 + random.random()),  # noqa: S311
            )
        elif job.trigger.interval != trigger.interval:
            job.reschedule(trigger)


def settle(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The configuration to apply, and the sections a reload cannot change (kept as were)."""
    kept = [section for section in RESTART_ONLY if getattr(old, section) != getattr(new, section)]
    if kept:
        new = new.model_copy(update={section: getattr(old, section) for section in kept})
    return new, kept


async def reload(app: web.Application, load: Callable[[], Config]) -> bool:
    """Load the configuration again and apply it; False (and the old one kept) if it fails."""
    async with app[RELOADING]:
        try:
            fresh = load()
        except ConfigError as exc:
            log.error("config.reload_refused", error=str(exc), keeping="the running configuration")
            return False
        try:
            await _apply(app, fresh)
        except Exception:
            # The task's outcome must be seen; what applied stays applied (a reapply that
            # failed runs again at the next start, as the stored rules digest tells).
            log.exception("config.reload_failed")
            return False
        return True


async def _apply(app: web.Application, fresh: Config) -> None:
    live = app[LIVE]
    fresh, kept = settle(live.config, fresh)
    if kept:
        log.warning("config.reload_needs_restart", sections=kept, keeping="their old values")
    configure_logging(fresh.logging)
    old = live.config
    changed = [key for key in Config.model_fields if getattr(old, key) != getattr(fresh, key)]
    live.config = fresh
    log.info("config.reloaded", changed=changed)
    if ENGINE in app:
        engine = app[ENGINE]
        engine.reconfigure(fresh)
        schedule(app[SCHEDULER], engine, fresh, app[CLOCK]())
        await engine.curator.ensure_current()
