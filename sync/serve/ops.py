"""Operational routes at the server root: /metrics, /healthz, /readyz."""

from __future__ import annotations

import contextlib
from datetime import datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sync.config import DEFAULT_VIEW
from sync.model import format_stamp
from sync.serve.api import CLOCK, LIVE, METRICS, READER, VIEW
from sync.serve.health import readiness
from sync.store import ListQuery, Reader
from sync.store.records import UpstreamState

__all__ = ["add_ops_routes"]

_GAUGE_TTL = 10.0  # seconds; scrapes more often than this reuse the last counts
_REFRESHED: web.AppKey[list[datetime]] = web.AppKey("gauges_refreshed")
_SHOWN: web.AppKey[set[str]] = web.AppKey("upstreams_shown")
_VIEWS_SHOWN: web.AppKey[set[str]] = web.AppKey("views_shown")
_STATUSES = ("active", "deprecated", "deleted")
# Passes looked at for the last one that ended: only the newest can still be running.
_RECENT_PASSES = 3


def _epoch(stamp: str | None) -> float:
    """A stored stamp as Unix time; 0 for none, as Prometheus exporters say "never"."""
    return datetime.fromisoformat(stamp).timestamp() if stamp else 0.0


async def _refresh_gauges(app: web.Application, now: datetime) -> None:
    """Values that live in the store are read at scrape time, so API replicas that never
    sync export them too, a restart during an outage neither resets nor hides them, and every
    configured upstream has its series from the first scrape on (an alert can only fire on a
    series that exists)."""
    last = app[_REFRESHED]
    if last and (now - last[0]).total_seconds() < _GAUGE_TTL:
        return
    reader: Reader = app[READER]
    metrics, config = app[METRICS], app[LIVE].config
    views = [DEFAULT_VIEW, *(v.name for v in config.views)]
    for view in views:
        by_status, servers = await reader.served_counts(view)
        for status in _STATUSES:
            metrics.served_versions.labels(view, status).set(by_status.get(status, 0))
        metrics.served_servers.labels(view).set(servers)
    # A view a reload removed has no series any more, as an upstream's below.
    for gone in app[_VIEWS_SHOWN] - set(views):
        with contextlib.suppress(KeyError):
            metrics.served_servers.remove(gone)
        for status in _STATUSES:
            with contextlib.suppress(KeyError):
                metrics.served_versions.remove(gone, status)
    app[_VIEWS_SHOWN].clear()
    app[_VIEWS_SHOWN].update(views)
    quarantined = await reader.quarantine_counts()
    states = await reader.upstream_states()
    current = format_stamp(now)
    for upstream in config.upstreams:
        name = upstream.name
        state = states.get(name) or UpstreamState(name)
        metrics.quarantined.labels(name).set(quarantined.get(name, 0))
        until = state.circuit_until
        metrics.circuit_open.labels(name).set(1 if until and until > current else 0)
        metrics.max_staleness.labels(name).set(upstream.staleness)
        metrics.last_success.labels(name).set(_epoch(state.last_success_at))
        metrics.consecutive_failures.labels(name).set(state.failures)
        # A failure recorded before failing_since existed (migration 0002) has only its time.
        failing = (state.failing_since or state.last_error_at) if state.failures else None
        metrics.failing_since.labels(name).set(_epoch(failing))
        # Interrupted and skipped passes end too: "any outcome" is in the passes table only.
        ended = [p.ended_at for p in await reader.passes(name, _RECENT_PASSES) if p.ended_at]
        ended += [s for s in (state.last_success_at, state.last_error_at) if s]
        metrics.last_attempt.labels(name).set(_epoch(max(ended, default=None)))
    # An upstream a reload removed has no series any more: its alerts must not fire on.
    shown = app[_SHOWN]
    for gone in shown - {u.name for u in config.upstreams}:
        for gauge in metrics.upstream_gauges():
            with contextlib.suppress(KeyError):
                gauge.remove(gone)
    shown.clear()
    shown.update(u.name for u in config.upstreams)
    last[:] = [now]


async def metrics_handler(request: web.Request) -> web.Response:
    await _refresh_gauges(request.app, request.app[CLOCK]())
    body = generate_latest(request.app[METRICS].registry)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 while the mirror can answer (see `sync.serve.health.readiness` for the strict mode); the
    body says how fresh each upstream is either way. A store that cannot answer is a 503."""
    app = request.app
    mode = app[LIVE].config.api.readiness
    try:
        # The read a client's first list request makes, through the same reader: the file
        # opening is not enough (a replaced or damaged file opens and then fails every query).
        await app[READER].list_servers(ListQuery(app[VIEW], 1))
        states = await app[READER].upstream_states()
    except Exception as exc:
        return web.json_response(
            {"ready": False, "readiness": mode, "store": f"unavailable: {type(exc).__name__}"},
            status=503,
        )
    ready, upstreams = readiness(app[LIVE].config, states, app[CLOCK]())
    body = {
        "ready": ready,
        "readiness": mode,
        "store": "ok",
        "fresh": all(u["status"] == "fresh" for u in upstreams),
        "upstreams": upstreams,
    }
    return web.json_response(body, status=200 if ready else 503)


def add_ops_routes(app: web.Application) -> None:
    app[_REFRESHED] = []
    app[_SHOWN] = set()
    app[_VIEWS_SHOWN] = set()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
