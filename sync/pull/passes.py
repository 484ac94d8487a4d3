"""What a pass reports: its result and summary line, its metrics and its one log event."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from sync.config import UpstreamConfig
from sync.metrics import Metrics
from sync.store import PassCounts

__all__ = ["PassResult", "circuit_delay", "report"]

log = structlog.get_logger("sync.pull.engine")


@dataclass(slots=True)
class PassResult:
    upstream: str
    mode: str
    outcome: str
    counts: PassCounts = field(default_factory=PassCounts)
    duration: float = 0.0
    checkpoint: str | None = None
    error: str | None = None
    pass_id: int | None = None

    def summary(self) -> str:
        c = self.counts
        text = (
            f"{self.upstream}: {self.outcome} {self.mode} pass in {self.duration:.1f}s, "
            f"{c.pages} pages, {c.inserted} inserted, {c.updated} updated, "
            f"{c.unchanged} unchanged, {c.removed} removed, {c.quarantined} quarantined"
        )
        if self.checkpoint:
            text += f", checkpoint {self.checkpoint}"
        return text + (f" — {self.error}" if self.error else "")


def circuit_delay(config: UpstreamConfig, failures: int) -> float | None:
    """How long an upstream is skipped after `failures` failed passes in a row: nothing
    below the threshold, then the interval doubling per failure, capped."""
    if failures < config.failure_threshold:
        return None
    doubled: float = config.interval * 2.0 ** (failures - config.failure_threshold)
    return min(doubled, config.circuit_max_delay)


def report(result: PassResult, metrics: Metrics) -> None:
    """Count the pass and log its canonical summary event."""
    if result.outcome == "skipped":
        return
    m, c = metrics, result.counts
    m.sync_runs.labels(result.upstream, result.mode, result.outcome).inc()
    m.sync_duration.labels(result.upstream, result.mode).observe(result.duration)
    for action in ("inserted", "updated", "unchanged", "removed", "quarantined"):
        m.sync_entries.labels(result.upstream, action).inc(getattr(c, action))
    log.info(
        "sync.finished",
        outcome=result.outcome,
        duration_s=round(result.duration, 3),
        checkpoint=result.checkpoint,
        error=result.error,
        **c.as_dict(),
    )
