"""Readiness, decided from what the store knows: pure, with the clock passed in."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sync.config import Config
from sync.model import format_stamp
from sync.store.records import UpstreamState

__all__ = ["readiness", "upstream_report"]


def upstream_report(
    config: Config, states: Mapping[str, UpstreamState], now: datetime
) -> list[dict[str, Any]]:
    """Per configured upstream: `fresh`, `stale` (since when) or `never synced`, and, while its
    passes fail, since when, how many in a row and the last error."""
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
        else:
            stale_at = datetime.fromisoformat(state.last_success_at) + timedelta(
                seconds=upstream.staleness
            )
            if now >= stale_at:
                entry["status"] = "stale"
                entry["stale_since"] = stale_at.isoformat().replace("+00:00", "Z")
            else:
                entry["status"] = "fresh"
        if state.failures:
            entry["failing_since"] = state.failing_since
            entry["consecutive_failures"] = state.failures
            entry["last_error"] = state.last_error
        if state.circuit_until and state.circuit_until > format_stamp(now):
            entry["circuit_open_until"] = state.circuit_until
        report.append(entry)
    return report


def readiness(
    config: Config, states: Mapping[str, UpstreamState], now: datetime
) -> tuple[bool, list[dict[str, Any]]]:
    """Whether a mirror whose store has answered should take traffic, and why.

    By default (`[api] readiness = "serve"`) it should, whatever its upstreams do: taking the
    only replica out of its Service during an upstream outage, or on an air-gapped start, would
    turn a stale mirror into no mirror at all. Staleness is reported, in the body, in
    `/metrics` and by the alerts. `"fresh"` is for fleets with replicas to spare: ready only
    while every upstream has a successful pass younger than its `max_staleness` (a mirror that
    never completed one would serve nothing, or a half-written first listing).
    """
    report = upstream_report(config, states, now)
    if config.api.readiness == "serve":
        return True, report
    return all(entry["status"] == "fresh" for entry in report), report
