"""One sync pass: plan → fetch a page → store raw → rebuild the served view → checkpoint.

Every page commits in one transaction together with its cursor, so a pass killed at any point
resumes from the last committed page with its original start time. The checkpoint (the next
`updated_since`) moves only when a pass completes, to the pass's start by the upstream's own
clock minus an overlap: pages are ordered by name, not time, and rows commit late upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from sync.config import DEFAULT_VIEW, Config, UpstreamConfig
from sync.curation import Curator
from sync.errors import (
    BadResponse,
    StoreError,
    UpstreamError,
    UpstreamUnavailable,
)
from sync.listing import ListingGuard, NameOrder
from sync.metrics import Metrics
from sync.passes import PassResult, circuit_delay, report
from sync.store import PassCounts, Store, UpstreamState, format_stamp, utcnow
from sync.upstream import Fetched, Sleep, UpstreamClient
from sync.wire import MalformedPage, Page, parse_page

__all__ = ["Engine", "PassResult"]

log = structlog.get_logger("sync.engine")
_BATCH = 500  # pending names decided per transaction at a pass's end
Clock = Callable[[], datetime]
Progress = Callable[[str, PassCounts], None]


class _Stopped(Exception):
    """The daemon is stopping: the pass ends after a committed page and resumes later."""


@dataclass(frozen=True, slots=True)
class _Plan:
    mode: str
    since: str | None
    cursor: str | None
    started: str | None
    sweep: int | None
    resumed_from: int | None
    last_name: str | None = None
    unordered: bool = False


class Engine:
    """Runs passes for the configured upstreams against one store. Never raises on a
    failing upstream: the failure is recorded and returned, and the mirror is left intact."""

    def __init__(
        self,
        config: Config,
        store: Store,
        metrics: Metrics,
        *,
        clock: Clock = utcnow,
        sleep: Sleep = asyncio.sleep,
        backoff: tuple[float, float] = (1.0, 60.0),
        progress: Progress | None = None,
        view: str = DEFAULT_VIEW,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.view = view
        self._sleep = sleep
        self._backoff = backoff
        self._progress = progress
        self.curator = Curator(config, store, metrics, view=view)
        self._locks = {u.name: asyncio.Lock() for u in config.upstreams}
        self._clients: dict[str, UpstreamClient] = {}
        self._stopping = False
        self._stopped = asyncio.Event()

    async def _client(self, config: UpstreamConfig) -> UpstreamClient:
        """One client per upstream for the engine's life, so politeness spans passes."""
        client = self._clients.get(config.name)
        if client is None:
            client = UpstreamClient(config, self.metrics, sleep=self._sleep, backoff=self._backoff)
            await client.__aenter__()
            self._clients[config.name] = client
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.__aexit__(None, None, None)

    def _now(self) -> str:
        return format_stamp(self.clock())

    async def startup(self) -> int:
        """Close passes left 'running' by a process that died (they resume on their next
        run), and re-evaluate the stored catalogue if the rules changed since last time."""
        async with self.store.transaction():
            closed = await self.store.close_interrupted(self._now())
        await self.curator.ensure_current()
        return closed

    def stop(self) -> None:
        """Ask running passes to end after the page they are on; nothing new starts. A pass
        waiting on the network (or backing off before a retry) stops waiting at once."""
        self._stopping = True
        self._stopped.set()

    async def _unless_stopped(self, fetch: asyncio.Future[Fetched]) -> Fetched:
        stopper: asyncio.Future[Any] = asyncio.ensure_future(self._stopped.wait())
        waiting: set[asyncio.Future[Any]] = {fetch, stopper}
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if fetch not in done:
            raise _Stopped
        return fetch.result()

    async def idle(self) -> None:
        """Wait until no pass is running."""
        for lock in self._locks.values():
            async with lock:
                pass

    async def run(
        self, upstream: str, *, full: bool = False, ignore_circuit: bool = False
    ) -> PassResult:
        """One pass of `upstream`; skipped if one is already running in this process, or if
        its circuit is open (an operator's `ignore_circuit` run tries anyway; the scheduler's
        first run after the open period is the probe that closes it on success)."""
        config = self.config.upstream(upstream)
        lock = self._locks[upstream]
        if self._stopping:
            return PassResult(
                upstream,
                "full" if full else "incremental",
                "skipped",
                error="the daemon is stopping",
            )
        if lock.locked():
            return PassResult(
                upstream,
                "full" if full else "incremental",
                "skipped",
                error="a pass of this upstream is already running",
            )
        async with lock:
            structlog.contextvars.bind_contextvars(upstream=upstream)
            try:
                return await self._run(config, full=full, ignore_circuit=ignore_circuit)
            except StoreError as exc:  # before the pass could even be recorded
                log.error("sync.store_unavailable", error=str(exc))
                mode = "full" if full else "incremental"
                self.metrics.sync_runs.labels(upstream, mode, "failed").inc()
                return PassResult(upstream, mode, "failed", error=str(exc))
            finally:
                structlog.contextvars.unbind_contextvars("upstream", "pass_id", "mode")

    async def _run(self, config: UpstreamConfig, *, full: bool, ignore_circuit: bool) -> PassResult:
        started_clock = time.perf_counter()
        async with self.store.transaction():
            state = await self.store.state(config.name)
        plan = self._plan(config, state, force_full=full)
        result = PassResult(config.name, plan.mode, "running")
        now = self.clock()
        if state.circuit_until and not ignore_circuit and self._now() < state.circuit_until:
            result.outcome, result.error = "skipped", f"circuit open until {state.circuit_until}"
            async with self.store.transaction():
                await self.store.record_skip(
                    config.name, mode=plan.mode, reason=result.error, now=format_stamp(now)
                )
            self.metrics.sync_runs.labels(config.name, plan.mode, "skipped").inc()
            log.info("sync.skipped", reason=result.error)
            return result
        async with self.store.transaction():
            first_sync = plan.mode == "full" and plan.resumed_from is None
            if first_sync and await self.store.served_is_empty():
                await self.store.suspend_search_index()
            result.pass_id = await self.store.start_pass(
                config.name,
                mode=plan.mode,
                started=plan.started or format_stamp(now),
                since=plan.since,
                cursor=plan.cursor,
                sweep=plan.sweep,
                resumed_from=plan.resumed_from,
                now=format_stamp(now),
            )
        structlog.contextvars.bind_contextvars(pass_id=result.pass_id, mode=plan.mode)
        log.info(
            "sync.started", since=plan.since, resumed_from=plan.resumed_from, cursor=plan.cursor
        )
        sweep = plan.sweep or result.pass_id
        try:
            if config.path is not None:
                await self._file_pass(config, state, plan, result, sweep, full)
            else:
                await self._http_pass(config, plan, result, sweep, now)
        except _Stopped:
            result.outcome, result.error = "interrupted", "daemon stopping; resumes next start"
            await self._record_interrupt(result)
        except Exception as exc:
            if not isinstance(exc, UpstreamError | MalformedPage | OSError | StoreError):
                # Whatever an upstream sends must end as a recorded, counted failure, never
                # as a traceback that leaves the pass 'running'.
                log.exception("sync.unexpected_error")
            result.outcome, result.error = "failed", str(exc) or type(exc).__name__
            try:
                await self._record_failure(
                    config, state, result, upstream_fault=not isinstance(exc, StoreError)
                )
            except StoreError as again:  # a full disk may refuse the record too
                log.error("sync.failure_not_recorded", error=str(again))
        except asyncio.CancelledError:
            result.outcome, result.error = "interrupted", "stopped before the pass completed"
            await asyncio.shield(self._record_interrupt(result))
            raise
        finally:
            result.duration = time.perf_counter() - started_clock
            report(result, self.metrics)
        return result

    def _plan(self, config: UpstreamConfig, state: UpstreamState, *, force_full: bool) -> _Plan:
        if (
            state.pass_id is not None
            and state.pass_mode
            and not (force_full and state.pass_mode != "full")
        ):
            return _Plan(
                state.pass_mode,
                state.pass_since,
                state.pass_cursor,
                state.pass_started,
                state.pass_sweep,
                state.pass_id,
                state.pass_last_name,
                state.pass_unordered,
            )
        due = (
            state.last_full_at is None
            or (self.clock() - datetime.fromisoformat(state.last_full_at)).total_seconds()
            >= config.full_every
        )
        if force_full or state.checkpoint is None or due or config.path is not None:
            return _Plan("full", None, None, None, None, None)
        return _Plan("incremental", state.checkpoint, None, None, None, None)

    async def _http_pass(
        self, config: UpstreamConfig, plan: _Plan, result: PassResult, sweep: int, now: datetime
    ) -> None:
        client = await self._client(config)
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
                    fetched = await self._unless_stopped(pending)
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
                if nxt is not None and not self._stopping:
                    # Fetch the next page while this one is written: the network and the
                    # disk overlap, and at most two pages are ever held.
                    pending = fetch(nxt)
                counts = await self._apply_page(
                    config.name, fetched.page, result, sweep, nxt, order
                )
                guard.counted(fetched.page.size, counts.repeated)
                if not guard.plausible() and not guard.plausible(await self._held(config.name)):
                    raise guard.overrun()
                if nxt is None:
                    break
                if self._stopping:
                    raise _Stopped
                cursor = nxt
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
        await self._complete(config, plan, result, sweep, started)

    async def _held(self, upstream: str) -> int:
        async with self.store.transaction():
            return await self.store.held_count(upstream)

    async def _file_pass(
        self,
        config: UpstreamConfig,
        state: UpstreamState,
        plan: _Plan,
        result: PassResult,
        sweep: int,
        force: bool,
    ) -> None:
        assert config.path is not None
        data = await asyncio.to_thread(config.path.read_bytes)
        if len(data) > config.max_response_bytes:
            raise MalformedPage(f"{config.path} is over the {config.max_response_bytes}-byte cap")
        digest = hashlib.sha256(data).hexdigest()
        if digest != state.source_digest or force:
            page = parse_page(data, max_entry_chars=config.max_entry_bytes)
            await self._apply_page(config.name, page, result, sweep, None, NameOrder())
        else:
            # Unchanged file: every held entry counts as seen, so the sweep removes nothing.
            async with self.store.transaction():
                result.counts.unchanged = await self.store.mark_all_seen(config.name, sweep)
        await self._complete(config, plan, result, sweep, None, source_digest=digest)

    async def _apply_page(
        self,
        upstream: str,
        page: Page,
        result: PassResult,
        sweep: int,
        cursor: str | None,
        order: NameOrder,
    ) -> PassCounts:
        now = self._now()
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

    async def _complete(
        self,
        config: UpstreamConfig,
        plan: _Plan,
        result: PassResult,
        sweep: int,
        started: str | None,
        *,
        source_digest: str | None = None,
    ) -> None:
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

    async def _record_failure(
        self,
        config: UpstreamConfig,
        state: UpstreamState,
        result: PassResult,
        *,
        upstream_fault: bool,
    ) -> None:
        failures = state.failures + 1
        circuit_until = None
        # Only the upstream's faults open its circuit: a full disk is not its doing.
        delay = circuit_delay(config, failures) if upstream_fault else None
        if delay is not None:
            circuit_until = format_stamp(self.clock() + timedelta(seconds=delay))
        async with self.store.transaction():
            await self.store.fail_pass(
                config.name,
                result.pass_id,
                error=result.error or "",
                now=self._now(),
                circuit_until=circuit_until,
            )
        log.warning(
            "sync.failed", error=result.error, failures=failures, circuit_until=circuit_until
        )

    async def _record_interrupt(self, result: PassResult) -> None:
        async with self.store.transaction():
            await self.store.close_interrupted(
                self._now(), result.error or "interrupted", pass_id=result.pass_id
            )


def _isolatable(exc: UpstreamError) -> bool:
    """Failures one entry can cause: a body that cannot be read, or the upstream's own 500
    while rendering a page. A gateway error or a refused connection is not narrowed."""
    return isinstance(exc, BadResponse) or exc.status == 500
