"""Serving the application on a socket that slow and idle clients cannot exhaust.

aiohttp waits as long as a client likes for a request head, and keeps idle keep-alive
connections for an hour: a thousand clients that connect and trickle (slowloris) hold a
thousand file descriptors, and once the process runs out, no ordinary client gets in. Here:

- every connection waiting for a request head (a new one, or an idle keep-alive one) is closed
  after `header_timeout`, however it trickles;
- at most `max_connections` are open: a new connection beyond it closes the one that has waited
  longest without sending a complete head, so a newcomer (possibly an ordinary client) gets in;
- the file-descriptor limit is raised to its hard maximum at start, and the bound is kept below
  what that limit allows;
- accepts that fail for lack of descriptors are counted and logged once per interval, not once
  per attempt, and shed waiting connections so that the retry finds a free descriptor.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web, web_protocol

from sync.config import ApiConfig

__all__ = ["BACKLOG", "FD_RESERVE", "ConnectionGuard", "connection_limit", "serve"]

log = structlog.get_logger("sync.serve.server")

BACKLOG = 128
# Descriptors that are not client connections: asyncio accepts up to BACKLOG sockets in one go
# before any of them can be refused, plus the store's files, upstream sockets, logs.
FD_RESERVE = BACKLOG + 64
ACCEPT_LOG_INTERVAL = 10.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ConnectionGuard:
    """Which connections wait for a request head, since when, and how many are open."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, limit: int, timeout: float) -> None:
        self.loop = loop
        self.limit = limit
        self.timeout = timeout
        self._open: set[_GuardedHandler] = set()
        # Waiting connections, the longest-waiting first, each with its deadline's timer.
        self._waiting: OrderedDict[_GuardedHandler, asyncio.TimerHandle] = OrderedDict()
        self.timed_out = 0
        self.evicted = 0

    @property
    def open(self) -> int:
        return len(self._open)

    def opened(self, conn: _GuardedHandler) -> None:
        self._open.add(conn)
        self.waiting(conn)
        if len(self._open) > self.limit:
            self.evicted += 1
            self._drop(next(iter(self._waiting)))

    def waiting(self, conn: _GuardedHandler) -> None:
        """`conn` now waits for a request head: from now, it has `timeout` to send one."""
        if conn not in self._open:
            return
        self.busy(conn)
        self._waiting[conn] = self.loop.call_later(self.timeout, self._expire, conn)

    def busy(self, conn: _GuardedHandler) -> None:
        """`conn` sent a complete head: its request is being answered."""
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def closed(self, conn: _GuardedHandler) -> None:
        self.busy(conn)
        self._open.discard(conn)

    def shed(self) -> int:
        """Close a tenth of the waiting connections (at least one), the longest-waiting first."""
        count = max(1, len(self._waiting) // 10) if self._waiting else 0
        for conn in list(self._waiting)[:count]:
            self.evicted += 1
            self._drop(conn)
        return count

    def _expire(self, conn: _GuardedHandler) -> None:
        self.timed_out += 1
        self._drop(conn)

    def _drop(self, conn: _GuardedHandler) -> None:
        # Forgotten at once: the transport closes on a later loop turn, and until then the
        # connection must count neither as open nor as a candidate to close again.
        self.closed(conn)
        conn.force_close()


class _GuardedHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, telling the guard when it waits for a head and when not."""

    __slots__ = ("_answered", "_guard")

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, loop=guard.loop, **kwargs)
        self._guard = guard
        self._answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._guard.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The parser counts every complete head (a malformed one too: it gets its 400).
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._guard.busy(self)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1
            if self._answered >= self._request_count:  # no pipelined head waits its turn
                self._guard.waiting(self)


class _AcceptFailures:
    """An event-loop exception handler that turns asyncio's per-attempt report of a failed
    accept (a traceback every second while descriptors are short) into one line per interval,
    and frees descriptors for the next attempt."""

    def __init__(self, loop: asyncio.AbstractEventLoop, guard: ConnectionGuard) -> None:
        self._loop = loop
        self._guard = guard
        self._pending = 0
        self._error = ""
        self._next_report = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._shedding = False
        self.listener_closed = False

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in _OUT_OF_RESOURCES
            and str(context.get("message", "")).startswith("socket.accept()")
        ):
            self._failed(exc)
        elif self.listener_closed and "_start_serving" in str(context.get("message", "")):
            # asyncio schedules one retry per failed accept, and runs them even after the
            # listening socket closed (on a descriptor of -1): nothing is left to serve.
            return
        else:
            loop.default_exception_handler(context)

    def _failed(self, exc: OSError) -> None:
        self._pending += 1
        self._error = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if not self._shedding:
            # asyncio tries the whole backlog in one go, failing each time: shed once a round.
            self._shedding = True
            self._loop.call_soon(self._shed)
        if self._loop.time() >= self._next_report:
            self.report()
        elif self._timer is None:
            self._timer = self._loop.call_at(self._next_report, self.report)

    def _shed(self) -> None:
        self._shedding = False
        self._guard.shed()

    def report(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            log.warning(
                "http.accept_failed",
                count=self._pending,
                error=self._error,
                interval_s=ACCEPT_LOG_INTERVAL,
                connections=self._guard.open,
                fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )
            self._pending = 0
            self._next_report = self._loop.time() + ACCEPT_LOG_INTERVAL


def connection_limit(configured: int) -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one; return (connections allowed, limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # an unlimited hard limit the kernel refuses: keep the soft one
    allowed = soft - FD_RESERVE if soft != resource.RLIM_INFINITY else configured
    if allowed < 1:
        raise OSError(
            errno.EMFILE,
            f"the file-descriptor limit ({soft}) leaves no room for client connections: "
            f"raise it above {FD_RESERVE} (LimitNOFILE=, ulimit -n)",
        )
    if configured > allowed:
        log.warning(
            "serve.max_connections_lowered", configured=configured, allowed=allowed, fd_limit=soft
        )
    return min(configured, allowed), soft


async def serve(
    app: web.Application,
    config: ApiConfig,
    *,
    reload: Callable[[], Coroutine[Any, Any, object]] | None = None,
) -> None:
    """Serve `app` until SIGINT or SIGTERM, then stop it gracefully; SIGHUP calls `reload`
    (connections, and the pass on its page, carry on)."""
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[object]] = set()
    limit, fd_limit = connection_limit(config.max_connections)
    guard = ConnectionGuard(loop, limit=limit, timeout=config.header_timeout)
    failures = _AcceptFailures(loop, guard)
    loop.set_exception_handler(failures)
    stop = asyncio.Event()

    def hangup() -> None:
        # Once stopping, a reload has nothing left to reconfigure.
        if reload is not None and not stop.is_set():
            task = loop.create_task(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    # SIGHUP is taken from the start (its default action would end the process), and acted
    # on once the application is set up.
    for sig, action in ((signal.SIGINT, stop.set), (signal.SIGTERM, stop.set)):
        loop.add_signal_handler(sig, action)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.stop_grace + 5)
    try:
        await runner.setup()
        loop.add_signal_handler(signal.SIGHUP, hangup)
        server = runner.server
        assert server is not None  # set by setup()

        def connection() -> _GuardedHandler:
            return _GuardedHandler(server, guard, access_log=None)

        try:
            listener = await loop.create_server(
                connection, config.host, config.port, backlog=BACKLOG, reuse_address=True
            )
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            message = f"cannot listen on {config.host}:{config.port}: {reason}"
            raise OSError(exc.errno, message) from None
        log.info(
            "serve.listening",
            host=config.host,
            port=config.port,
            max_connections=limit,
            header_timeout=config.header_timeout,
            fd_limit=fd_limit,
        )
        await stop.wait()
        failures.listener_closed = True
        listener.close()
    finally:
        stop.set()
        for task in list(reloads):
            task.cancel()
        # The handlers stay through the graceful stop: a second SIGTERM or a SIGHUP (a
        # logrotate's reload) must not end the process before the running page commits.
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        failures.report()
        # The exception handler stays: asyncio's stray accept retries may still fire.
        log.info("serve.connections", timed_out=guard.timed_out, evicted=guard.evicted)
