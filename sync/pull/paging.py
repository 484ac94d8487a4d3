"""Reading one upstream's listing into the store, for one pass: pages and their cursors,
narrowing round an unreadable entry, names decided once complete, and the reconcile at the end.

Every page commits in one transaction together with its cursor, so a pass killed at any point
resumes from the last committed page with its original start time. The engine decides when a
pass runs and records how it ended; this module does the work in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from sync.config import UpstreamConfig
from sync.curate.curation import Curator
from sync.errors import BadResponse, UpstreamError, UpstreamUnavailable
from sync.model import format_stamp
from sync.pull.listing import ListingGuard, NameOrder
from sync.pull.passes import PassResult
from sync.pull.upstream import Fetched, UpstreamClient
from sync.pull.wire import MalformedPage, Page, parse_page
from sync.store import PassCounts, Store, UpstreamState

__all__ = ["Pager", "Plan", "Stop", "Stopped"]

log = structlog.get_logger("sync.pull.engine")
_BATCH = 500  # pending names decided per transaction at a pass's end
Progress = Callable[[str, PassCounts], None]


class Stopped(Exception):
    """The daemon is stopping: the pass ends after a committed page and resumes later."""


class Stop:
    """The daemon's request to stop, which a pass waiting on the network hears at once."""

    def __init__(self) -> None:
        self.requested = False
        self._event = asyncio.Event()

    def request(self) -> None:
        self.requested = True
        self._event.set()

    async def race(self, fetch: asyncio.Future[Fetched]) -> Fetched:
        stopper: asyncio.Future[Any] = asyncio.ensure_future(self._event.wait())
        waiting: set[asyncio.Future[Any]] = {fetch, stopper}
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if fetch not in done:
            raise Stopped
        return fetch.result()


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    since: str | None
    cursor: str | None
    started: str | None
    sweep: int | None
    resumed_from: int | None
    last_name: str | None = None
    unordered: bool = False


class Pager:
    """The work of one pass of one upstream."""

    def __init__(
        self,
        config: UpstreamConfig,
        store: Store,
        curator: Curator,
        plan: Plan,
        result: PassResult,
        *,
        sweep: int,
        now: Callable[[], str],
        stop: Stop,
        progress: Progress | None,
    ) -> None:
        self.config, self.store, self.curator = config, store, curator
        self.plan, self.result, self.sweep = plan, result, sweep
        self._now, self.stop, self._progress = now, stop, progress

    async def http(self, client: UpstreamClient, now: datetime) -> None:
        config, plan = self.config, self.plan
        include_deleted = plan.mode == "full"
        cursor, started = plan.cursor, plan.started
        guard = ListingGuard(
            config.page_size, cursor, max_entries=config.max_entries, upstream=config.name
        )
        order = NameOrder(plan.last_name, plan.unordered)
        size, narrow = config.page_size, 0

        def fetch(after: str | None) -> asyncio.Future[Fetched]:
            # Narrowed pages round an unreadable entry retry once: the full page already
            # used every retry.
            retries = None if size == config.page_size else min(1, config.retries)
            return asyncio.ensure_future(
                client.fetch_page(
                    after, plan.since, include_deleted=include_deleted, limit=size, retries=retries
                )
            )

        pending = fetch(cursor)
        try:
            while True:
                try:
                    fetched = await self.stop.race(pending)
                except (BadResponse, UpstreamUnavailable) as exc:
                    if not _isolatable(exc):
                        raise
                    if size == 1:
                        raise type(exc)(
                            f"{exc}; the entry after cursor {cursor!r} cannot be read even "
                            "alone (everything before it is mirrored)",
                            status=exc.status,
                        ) from None
                    # Re-read the stretch in smaller pages: the entries round the unreadable
                    # one are mirrored, and the one that stays unreadable is named.
                    narrow, size = max(narrow, size), max(1, size // 2)
                    log.warning("sync.narrowing", cursor=cursor, limit=size, error=str(exc))
                    pending = fetch(cursor)
                    continue
                if started is None:
                    # The upstream's own clock, where it gives one, is what its rows are stamped
                    # with; ours may be skewed. Its Date is truncated to the second: conservative.
                    started = format_stamp(min(fetched.date or now, now))
                    async with self.store.transaction():
                        await self.store.set_pass_started(config.name, started)
                nxt = guard.follow(fetched)
                if narrow:
                    narrow -= fetched.page.size
                    if narrow <= 0:
                        narrow, size = 0, config.page_size
                if nxt is not None and not self.stop.requested:
                    # Fetch the next page while this one is written: the network and the
                    # disk overlap, and at most two pages are ever held.
                    pending = fetch(nxt)
                counts = await self._apply_page(fetched.page, nxt, order)
                guard.counted(fetched.page.size, counts.repeated)
                if not guard.plausible() and not guard.plausible(await self._held(config.name)):
                    raise guard.overrun()
                if nxt is None:
                    break
                if self.stop.requested:
                    raise Stopped
                cursor = nxt
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
        await self._complete(started)

    async def _held(self, upstream: str) -> int:
        async with self.store.transaction():
            return await self.store.held_count(upstream)

    async def file(self, state: UpstreamState, force: bool) -> None:
        config, result = self.config, self.result
        assert config.path is not None
        data = await asyncio.to_thread(config.path.read_bytes)
        if len(data) > config.max_response_bytes:
            raise MalformedPage(f"{config.path} is over the {config.max_response_bytes}-byte cap")
        digest = hashlib.sha256(data).hexdigest()
        if digest != state.source_digest or force:
            page = parse_page(data, max_entry_chars=config.max_entry_bytes)
            await self._apply_page(page, None, NameOrder())
        else:
            # Unchanged file: every held entry counts as seen, so the sweep removes nothing.
            async with self.store.transaction():
                result.counts.unchanged = await self.store.mark_all_seen(config.name, self.sweep)
        await self._complete(None, source_digest=digest)

    async def _apply_page(self, page: Page, cursor: str | None, order: NameOrder) -> PassCounts:
        """Store one page and its cursor in one transaction; decide the names it completed."""
        upstream, result, sweep, now = self.config.name, self.result, self.sweep, self._now()
        boundary = order.boundary([e.name for e in page.entries])
        async with self.store.transaction():
            counts, touched = await self.store.upsert_entries(
                upstream, page.entries, sweep=sweep, now=now
            )
            if page.rejected:
                await self.store.quarantine(upstream, page.rejected, now)
                for rejected in page.rejected:
                    log.warning("sync.quarantined", key=rejected.key, reason=rejected.reason)
            counts.quarantined = len(page.rejected)
            counts.pages = 1
            # A name is decided once a later name shows that all its versions are stored:
            # never on part of them (a cap or `isLatest` would act on a fragment).
            await self.store.add_pending(upstream, touched)
            if boundary is not None:
                await self.curator.rebuild(
                    await self.store.take_pending(upstream, boundary, _BATCH * 4)
                )
            assert result.pass_id is not None
            await self.store.record_page(
                upstream,
                result.pass_id,
                cursor,
                counts,
                last_name=order.last,
                unordered=order.unordered,
            )
        result.counts.add(counts)
        if self._progress is not None:
            self._progress(upstream, result.counts)
        return counts

    async def _complete(self, started: str | None, *, source_digest: str | None = None) -> None:
        config, plan, result, sweep = self.config, self.plan, self.result, self.sweep
        while True:  # every name left pending is complete now; decided in bounded batches
            async with self.store.transaction():
                names = await self.store.take_pending(config.name, None, _BATCH)
                await self.curator.rebuild(names)
            if len(names) < _BATCH:
                break
        now = self._now()
        begun = datetime.fromisoformat(started or plan.started or now)
        checkpoint = format_stamp(begun - timedelta(seconds=config.overlap))
        async with self.store.transaction():
            if plan.mode == "full":
                # A file is read whole, so one reading is the whole truth; an HTTP listing can
                # end early without saying so, so two complete ones must agree.
                agree = 1 if config.path is not None else 2
                swept = await self.store.sweep(config.name, sweep, now, agree=agree)
                if swept.held and not swept.counted:
                    log.warning(
                        "sync.sweep_skipped",
                        held=swept.held,
                        seen=swept.seen,
                        reason="full pass saw under half of what the mirror holds",
                    )
                elif swept.absent_once:
                    log.info(
                        "sync.absent_once",
                        entries=swept.absent_once,
                        reason="not listed; withdrawn if the next full pass agrees",
                    )
                result.counts.removed = swept.removed
                await self.curator.rebuild(swept.names)
            assert result.pass_id is not None
            await self.store.record_page(
                config.name, result.pass_id, None, PassCounts(removed=result.counts.removed)
            )
            if await self.store.rebuild_search_index():
                log.info("sync.search_index_built")
            await self.store.finish_pass(
                config.name,
                result.pass_id,
                checkpoint=checkpoint,
                full=plan.mode == "full",
                now=now,
                source_digest=source_digest,
            )
        result.outcome, result.checkpoint = "ok", checkpoint


def _isolatable(exc: UpstreamError) -> bool:
    """Failures one entry can cause: a body that cannot be read, or the upstream's own 500
    while rendering a page. A gateway error or a refused connection is not narrowed."""
    return isinstance(exc, BadResponse) or exc.status == 500
