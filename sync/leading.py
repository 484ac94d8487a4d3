"""Who writes: the process holding a SQLite file's lock, or the elected leader of a shared
PostgreSQL store, and only while elected.

Every replica on PostgreSQL serves the read API; `serve` (with sync) also competes for the
leadership (`sync.store.postgres.leader`). On election the writer takes the epoch (`lead`,
which also continues `updatedAt` after every stamp any earlier leader stored), a fresh engine
closes the passes an earlier leader left running (so the next pass resumes from the last
committed page), and the scheduler starts with a pass at once. On deposition the writer stops
at once (`unlead`: its commits are refused from then on, and the fence refused them already),
the engine is asked to stop and the scheduler goes. A clean stop lets the running page commit
and then resigns, so that a follower takes over at once.

A database migrated by a newer release is never led (`leader.refused`); the replica serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from sync.config import Config
from sync.errors import NotLeader, SchemaTooNew, StoreError
from sync.pull.engine import Engine
from sync.serve.api import CLOCK, CONFIG, LIVE, METRICS
from sync.store import Store, open_store

if TYPE_CHECKING:
    from sync.store.postgres.leader import Leadership

__all__ = ["WRITING", "Writing", "pg_writer_ctx", "schedule", "start_writing", "stop_writing"]

log = structlog.get_logger("sync.leading")


@dataclass(eq=False)
class Writing:
    """What this process writes with, while it does: on PostgreSQL, engine and scheduler come
    and go with the leadership."""

    store: Store | None = None
    engine: Engine | None = None
    scheduler: AsyncIOScheduler | None = None
    leadership: Leadership | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stopping: bool = False


WRITING = web.AppKey("writing", Writing)


@runtime_checkable
class Leads(Protocol):
    """A writer of a shared store: it commits only under the epoch it was given."""

    holder: str

    async def lead(self, epoch: int, holder: str) -> None: ...
    def unlead(self) -> None: ...


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


def start_writing(app: web.Application, engine: Engine) -> None:
    """Scheduled passes with `engine`, each upstream's first at once."""
    writing = app[WRITING]
    scheduler = AsyncIOScheduler(timezone="UTC")
    schedule(scheduler, engine, app[LIVE].config, app[CLOCK]())
    scheduler.start()
    writing.engine, writing.scheduler = engine, scheduler
    app[METRICS].leader.set(1)


async def stop_writing(app: web.Application, *, close: bool = True) -> None:
    """No new pass; a running one ends after its page (within `stop_grace`); the engine is
    closed unless its owner closes it later (`close=False`)."""
    writing = app[WRITING]
    engine, scheduler = writing.engine, writing.scheduler
    writing.engine = writing.scheduler = None
    app[METRICS].leader.set(0)
    if scheduler is not None:
        # APScheduler's shutdown cancels running coroutine jobs rather than waiting for them:
        # stop new runs, ask running passes to stop after their current page, then wait.
        scheduler.pause()
    if engine is not None:
        engine.stop()
        grace = app[LIVE].config.api.stop_grace
        try:
            async with asyncio.timeout(grace):
                await engine.idle()
        except TimeoutError:
            log.warning("app.stop_grace_exceeded", seconds=grace)
    if scheduler is not None:
        scheduler.shutdown(wait=False)
    if engine is not None and close:
        await engine.close()


async def _elected(app: web.Application, store: Store, leads: Leads, epoch: int) -> None:
    writing = app[WRITING]
    leadership = writing.leadership
    async with writing.lock:
        if writing.stopping or leadership is None or leadership.epoch != epoch:
            return  # stopping, or deposed already (that event follows)
        engine: Engine | None = None
        try:
            await leads.lead(epoch, leads.holder)
            config = app[LIVE].config
            engine = Engine(config, store, app[METRICS], clock=app[CLOCK])
            closed = await engine.startup()
        except NotLeader:
            leads.unlead()
            if engine is not None:
                await engine.close()
            return  # the renewal tells the rest
        except Exception as exc:  # a StoreError, or any failure of the start-up itself
            leads.unlead()
            if engine is not None:
                with contextlib.suppress(Exception):
                    await engine.close()
            # Leading without writing would stall the mirror: let another replica (or a
            # later try of this one) lead.
            log.error("leader.cannot_write", epoch=epoch, error=str(exc) or type(exc).__name__)
            leadership.step_down(f"could not start writing: {exc}")
            return
        if writing.stopping:
            await engine.close()
            return
        log.info("leader.writing", epoch=epoch, holder=leads.holder, interrupted_closed=closed)
        start_writing(app, engine)


async def _deposed(app: web.Application, leads: Leads) -> None:
    leads.unlead()
    writing = app[WRITING]
    async with writing.lock:
        await stop_writing(app)


async def pg_writer_ctx(app: web.Application) -> AsyncIterator[None]:
    """Compete for the leadership of the configured PostgreSQL store while the app runs."""
    storage = app[CONFIG].storage
    assert storage.url is not None
    writing = app[WRITING]
    try:
        store = await open_store(storage)
    except SchemaTooNew as exc:
        log.error("leader.refused", reason="schema newer than this code", error=str(exc))
        yield
        return
    if not isinstance(store, Leads):
        await store.close()
        raise StoreError(f"{store.where}: this store cannot be led")
    leads = store
    writing.store = store

    async def elected(epoch: int) -> None:
        await _elected(app, store, leads, epoch)

    async def deposed(reason: str) -> None:
        await _deposed(app, leads)

    # Imported here: a SQLite daemon never loads the PostgreSQL driver.
    from sync.store.postgres.leader import Leadership  # noqa: PLC0415

    leadership = Leadership(
        storage.url, lease=storage.lease, holder=leads.holder, elected=elected, deposed=deposed
    )
    writing.leadership = leadership
    leadership.start()
    try:
        yield
    finally:
        writing.stopping = True
        leadership.withdraw()  # no takeover now; a leader keeps renewing while its page ends
        async with writing.lock:
            await stop_writing(app)
        leads.unlead()
        await leadership.stop()
        with contextlib.suppress(Exception):
            await store.close()
