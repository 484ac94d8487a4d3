"""Sync passes: when one runs, what it plans (full, incremental, or the resumption of one
left unfinished), and how it ended: the circuit breaker, failure and interruption records.

The checkpoint (the next `updated_since`) moves only when a pass completes, to the pass's
start by the upstream's own clock minus an overlap: pages are ordered by name, not time, and
rows commit late upstream. `sync/paging.py` does a pass's reading and writing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from sync.config import Config, UpstreamConfig
from sync.curate.curation import Curator
from sync.errors import (
    StoreError,
    UpstreamError,
)
from sync.metrics import Metrics
from sync.model import format_stamp, utcnow
from sync.pull.paging import Pager, Plan, Progress, Stop, Stopped
from sync.pull.passes import PassResult, circuit_delay, report
from sync.pull.upstream import Sleep, UpstreamClient
from sync.pull.wire import MalformedPage
from sync.store import Store, UpstreamState

__all__ = ["Engine", "PassResult"]

log = structlog.get_logger("sync.pull.engine")
Clock = Callable[[], datetime]


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
        monotonic: Callable[[], float] = time.monotonic,
        backoff: tuple[float, float] = (1.0, 60.0),
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._backoff = backoff
        self._progress = progress
        self.curator = Curator(config, store, metrics)
        self._locks = {u.name: asyncio.Lock() for u in config.upstreams}
        self._clients: dict[str, UpstreamClient] = {}
        self._stop = Stop()
        self._retiring: set[asyncio.Future[None]] = set()

    async def _client(self, config: UpstreamConfig) -> UpstreamClient:
        """One client per upstream for the engine's life, so politeness spans passes."""
        client = self._clients.get(config.name)
        if client is None:
            client = UpstreamClient(
                config,
                self.metrics,
                sleep=self._sleep,
                backoff=self._backoff,
                monotonic=self._monotonic,
            )
            await client.__aenter__()
            self._clients[config.name] = client
        return client

    async def close(self) -> None:
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
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
        self._stop.request()

    async def idle(self) -> None:
        """Wait until no pass is running."""
        for lock in self._locks.values():
            async with lock:
                pass

    def reconfigure(self, config: Config) -> None:
        """Use `config` for every pass that starts from now on; a running pass finishes its
        listing with the upstream settings it started with, and its next pages are decided by
        the new rules. A client whose upstream changed is closed once its pass is done."""
        self.config = config
        self.curator.configure(config)
        for upstream in config.upstreams:
            self._locks.setdefault(upstream.name, asyncio.Lock())
        for name, client in list(self._clients.items()):
            if any(u == client.config for u in config.upstreams):
                continue
            del self._clients[name]
            task = asyncio.ensure_future(self._retire(client, self._locks[name]))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, client: UpstreamClient, lock: asyncio.Lock) -> None:
        async with lock:
            await client.__aexit__(None, None, None)

    async def run(
        self,
        upstream: str,
        *,
        full: bool = False,
        ignore_circuit: bool = False,
        wait: bool = False,
    ) -> PassResult:
        """One pass of `upstream`; skipped if one is already running in this process (an
        operator's `wait` run queues behind it instead), or if its circuit is open (an
        operator's `ignore_circuit` run tries anyway; the scheduler's first run after the open
        period is the probe that closes it on success)."""
        mode = "full" if full else "incremental"
        self.config.upstream(upstream)  # an unknown name is a ConfigError, whoever asks
        lock = self._locks[upstream]
        if lock.locked() and not wait:
            error = "a pass of this upstream is already running"
            return PassResult(upstream, mode, "skipped", error=error)
        async with lock:
            if self._stop.requested:
                return PassResult(upstream, mode, "skipped", error="the daemon is stopping")
            # The settings in force when the pass starts: a reload may have come meanwhile.
            config = self.config.upstream(upstream)
            structlog.contextvars.bind_contextvars(upstream=upstream)
            try:
                return await self._run(config, full=full, ignore_circuit=ignore_circuit)
            except StoreError as exc:  # before the pass could even be recorded
                log.error("sync.store_unavailable", error=str(exc))
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
        pager = Pager(
            config,
            self.store,
            self.curator,
            plan,
            result,
            sweep=sweep,
            now=self._now,
            stop=self._stop,
            progress=self._progress,
        )
        try:
            if config.path is not None:
                await pager.file(state, full)
            else:
                await pager.http(await self._client(config), now)
        except Stopped:
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

    def _plan(self, config: UpstreamConfig, state: UpstreamState, *, force_full: bool) -> Plan:
        if (
            state.pass_id is not None
            and state.pass_mode
            and not (force_full and state.pass_mode != "full")
        ):
            return Plan(
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
            return Plan("full", None, None, None, None, None)
        return Plan("incremental", state.checkpoint, None, None, None, None)

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
