"""Prometheus metrics, on an explicit registry per process (and per test)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sync import __version__

__all__ = ["Metrics"]

_PREFIX = "subregistry"
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PASS_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200)


class Metrics:
    """Every series the daemon exports. Labels are bounded: upstream names, rule names, routes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.sync_runs = Counter(
            f"{_PREFIX}_sync_runs",
            "Sync passes by outcome",
            ["upstream", "mode", "outcome"],
            registry=r,
        )
        self.sync_duration = Histogram(
            f"{_PREFIX}_sync_duration_seconds",
            "Wall time of a sync pass",
            ["upstream", "mode"],
            buckets=_PASS_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            f"{_PREFIX}_sync_last_success_timestamp_seconds",
            "Unix time at which the last pass of this upstream completed",
            ["upstream"],
            registry=r,
        )
        self.sync_entries = Counter(
            f"{_PREFIX}_sync_entries",
            "Entries seen by sync passes, by what was done",
            ["upstream", "action"],
            registry=r,
        )
        self.upstream_requests = Counter(
            f"{_PREFIX}_upstream_requests",
            "HTTP requests to upstreams by status code ('error' when no response arrived)",
            ["upstream", "code"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            f"{_PREFIX}_upstream_request_duration_seconds",
            "Upstream request latency",
            ["upstream"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.quarantined = Gauge(
            f"{_PREFIX}_quarantined_entries",
            "Entries held in quarantine",
            ["upstream"],
            registry=r,
        )
        self.served_versions = Gauge(
            f"{_PREFIX}_served_versions",
            "Versions in the served view by status",
            ["status"],
            registry=r,
        )
        self.served_servers = Gauge(
            f"{_PREFIX}_served_servers", "Server names with a visible version", registry=r
        )
        self.rule_hits = Counter(
            f"{_PREFIX}_rule_hits",
            "Times a curation rule acted on an entry",
            ["rule"],
            registry=r,
        )
        self.circuit_open = Gauge(
            f"{_PREFIX}_upstream_circuit_open",
            "1 while the upstream's circuit breaker is open",
            ["upstream"],
            registry=r,
        )
        self.http_requests = Counter(
            f"{_PREFIX}_http_requests",
            "API requests by route template",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            f"{_PREFIX}_http_request_duration_seconds",
            "API request latency by route template",
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            f"{_PREFIX}_build_info",
            "Always 1; the version is in the label",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
