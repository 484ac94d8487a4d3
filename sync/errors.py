"""Typed errors: what is transient (retry it) and what is permanent (report it)."""

from __future__ import annotations

__all__ = [
    "BadResponse",
    "CommandFailed",
    "ConfigError",
    "MalformedListing",
    "NotLeader",
    "PermanentUpstreamError",
    "RateLimited",
    "SchemaTooNew",
    "StoreError",
    "StoreLocked",
    "TransientUpstreamError",
    "UpstreamError",
    "UpstreamUnavailable",
]


class CommandFailed(Exception):
    """A command cannot do its work; the message is the whole story for the operator."""


class ConfigError(Exception):
    """The configuration is unusable; the message names the offending key."""


class StoreError(Exception):
    """The mirror's store cannot be opened or written."""


class StoreLocked(StoreError):
    """Another process already holds the writer lock on this mirror file."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer release: reading is fine, writing is not."""


class NotLeader(StoreError):
    """This writer does not (or no longer) hold the leadership of a shared store: its
    transaction was not committed, and it must not write again until elected."""


class UpstreamError(Exception):
    """Anything that went wrong talking to one upstream registry."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientUpstreamError(UpstreamError):
    """Worth retrying: the same request may succeed later."""

    retry_after: float | None = None


class UpstreamUnavailable(TransientUpstreamError):
    """Connection refused or reset, timeout, or a 5xx answer."""


class RateLimited(TransientUpstreamError):
    """HTTP 429; `retry_after` carries the upstream's own advice when it gave one."""

    def __init__(self, message: str, *, retry_after: float | None, status: int = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class BadResponse(TransientUpstreamError):
    """A 200 that is not the expected JSON (HTML error page, truncated body, too large)."""


class PermanentUpstreamError(UpstreamError):
    """A 4xx other than 429, or a redirect we refuse to follow: retrying will not help."""


class MalformedListing(PermanentUpstreamError):
    """The pages read but do not add up to a listing: a cursor that revisits an earlier one, a
    cursor that is not a string, a full page without one, more pages than the upstream's size
    explains. Never read as "the end of the list"; the pass fails and the checkpoint stays."""
