"""Prometheus metrics, on an explicit registry per process (and per test)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from sync import __version__

__all__ = ["Metrics", "method_label"]

_PREFIX = "subregistry"
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PASS_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200)
# Any token is a valid HTTP method: a client must not be able to mint label values.
_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})


def method_label(method: str) -> str:
    """The request method as a label value: the standard ones, else `other`."""
    return method if method in _METHODS else "other"


class Metrics:
    """Every series the daemon exports. Labels are bounded: upstream names, rule names, routes,
    standard methods, status codes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # The standard process_* and python_* series that prometheus_client's default registry
        # carries (a registry passed in, such as that one, brings its own).
        if registry is None:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
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
        # The five per-upstream gauges below are read from the store at scrape time, for every
        # configured upstream from start-up on: restarts and API replicas export them too.
        self.last_success = Gauge(
            f"{_PREFIX}_sync_last_success_timestamp_seconds",
            "Unix time at which the last pass of this upstream completed; 0 if none ever did",
            ["upstream"],
            registry=r,
        )
        self.last_attempt = Gauge(
            f"{_PREFIX}_sync_last_attempt_timestamp_seconds",
            "Unix time at which the last pass of this upstream ended, whatever its outcome; "
            "0 if none has",
            ["upstream"],
            registry=r,
        )
        self.consecutive_failures = Gauge(
            f"{_PREFIX}_sync_consecutive_failures",
            "Passes of this upstream failed in a row since its last success",
            ["upstream"],
            registry=r,
        )
        self.failing_since = Gauge(
            f"{_PREFIX}_sync_failing_since_timestamp_seconds",
            "Unix time of the first failed pass since the last success; 0 while not failing",
            ["upstream"],
            registry=r,
        )
        self.max_staleness = Gauge(
            f"{_PREFIX}_sync_max_staleness_seconds",
            "The upstream's configured max_staleness: older data is stale",
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
            "Versions in a served view by status",
            ["view", "status"],
            registry=r,
        )
        self.served_servers = Gauge(
            f"{_PREFIX}_served_servers",
            "Server names with a visible version in a served view",
            ["view"],
            registry=r,
        )
        self.rule_hits = Counter(
            f"{_PREFIX}_rule_hits",
            "Times a curation rule acted on an entry, by the view it decided",
            ["view", "rule"],
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
            "API requests by view and route template",
            ["view", "route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            f"{_PREFIX}_http_request_duration_seconds",
            "API request latency by view and route template",
            ["view", "route", "method", "status"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        # Alerting wants exactly one writer per store: sum over replicas == 1.
        self.leader = Gauge(
            f"{_PREFIX}_leader",
            "1 on the process that writes the store (the elected leader of a PostgreSQL store, "
            "a syncing daemon of a SQLite file); 0 otherwise",
            registry=r,
        )
        self.build_info = Gauge(
            f"{_PREFIX}_build_info",
            "Always 1; the version is in the label",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)

    def upstream_gauges(self) -> tuple[Gauge, ...]:
        """The gauges labelled by upstream alone: one series per configured upstream."""
        return (
            self.last_success,
            self.last_attempt,
            self.consecutive_failures,
            self.failing_since,
            self.max_staleness,
            self.quarantined,
            self.circuit_open,
        )

    def observe_request(
        self, view: str, route: str, method: str, status: int, seconds: float
    ) -> None:
        """One API request, counted and timed under the same bounded labels (`view` is a
        configured view's name, or "" for a request no view answers)."""
        labels = (view, route, method_label(method), str(status))
        self.http_requests.labels(*labels).inc()
        self.http_duration.labels(*labels).observe(seconds)
