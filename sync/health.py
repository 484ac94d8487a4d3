"""Readiness, decided from what the store knows: pure, with the clock passed in."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sync.config import Config
from sync.store.records import UpstreamState

__all__ = ["readiness"]


def readiness(
    config: Config, states: Mapping[str, UpstreamState], now: datetime
) -> tuple[bool, list[dict[str, Any]]]:
    """Ready when every upstream's last good pass is younger than its `max_staleness`.

    A mirror that has never completed a pass is not ready: it would serve nothing, or a
    half-written first listing. A failing upstream whose data is still fresh stays ready
    (the mirror exists to ride out upstream faults) but is named in the report.
    """
    ready = True
    report: list[dict[str, Any]] = []
    for upstream in config.upstreams:
        state = states.get(upstream.name) or UpstreamState(upstream.name)
        entry: dict[str, Any] = {
            "upstream": upstream.name,
            "last_success": state.last_success_at,
            "max_staleness_seconds": upstream.staleness,
        }
        if state.last_success_at is None:
            entry["status"] = "never synced"
            ready = False
        else:
            stale_at = datetime.fromisoformat(state.last_success_at) + timedelta(
                seconds=upstream.staleness
            )
            if now >= stale_at:
                entry["status"] = "stale"
                entry["stale_since"] = stale_at.isoformat().replace("+00:00", "Z")
                ready = False
            else:
                entry["status"] = "fresh"
        if state.failures:
            entry["failing_since"] = state.failing_since
            entry["consecutive_failures"] = state.failures
            entry["last_error"] = state.last_error
        if state.circuit_until and state.circuit_until > now.isoformat():
            entry["circuit_open_until"] = state.circuit_until
        report.append(entry)
    return ready, report
