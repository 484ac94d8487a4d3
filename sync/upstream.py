"""The HTTP client for one upstream registry: polite, bounded, and typed in its failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Self

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from yarl import URL

from sync import USER_AGENT
from sync.config import UpstreamConfig
from sync.errors import (
    BadResponse,
    PermanentUpstreamError,
    RateLimited,
    TransientUpstreamError,
    UpstreamUnavailable,
)
from sync.metrics import Metrics
from sync.wire import MalformedPage, Page, parse_page

__all__ = ["Fetched", "UpstreamClient", "parse_retry_after"]

Sleep = Callable[[float], Awaitable[None]]
_MAX_REDIRECTS = 5
_RETRY_AFTER_CAP = 600.0
_PENALTY_CAP = 60.0


@dataclass(frozen=True, slots=True)
class Fetched:
    page: Page
    date: datetime | None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date form)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _RETRY_AFTER_CAP)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(delta, 0.0), _RETRY_AFTER_CAP)


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class UpstreamClient:
    """Owns one aiohttp session for one upstream; use as an async context manager.

    Politeness is per upstream, across requests: `page_delay` between requests, and a 429
    slows every later request down (a penalty that doubles on each 429 and decays on success).
    """

    def __init__(
        self,
        config: UpstreamConfig,
        metrics: Metrics,
        *,
        sleep: Sleep = asyncio.sleep,
        backoff: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        if config.url is None:
            raise ValueError(f"upstream {config.name} has no url")
        self.config = config
        self._base = URL(config.url)
        self._metrics = metrics
        self._sleep = sleep
        self._backoff = backoff
        self._session: aiohttp.ClientSession | None = None
        self._last_request = 0.0
        self.penalty = 0.0

    async def __aenter__(self) -> Self:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        headers.update({k: v.get_secret_value() for k, v in self.config.headers.items()})
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            auto_decompress=True,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def list_url(self, cursor: str | None, since: str | None, *, include_deleted: bool) -> URL:
        query = {"limit": str(self.config.page_size)}
        if cursor:
            query["cursor"] = cursor
        if since:
            query["updated_since"] = since
        elif include_deleted:
            query["include_deleted"] = "true"
        return (self._base / "v0.1" / "servers").with_query(query)

    async def fetch_page(
        self, cursor: str | None, since: str | None, *, include_deleted: bool
    ) -> Fetched:
        """One list page, retried on transient faults with backoff, jitter and Retry-After."""
        url = self.list_url(cursor, since, include_deleted=include_deleted)
        initial, maximum = self._backoff
        exponential = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            advised = getattr(error, "retry_after", None)
            return float(advised) if advised is not None else exponential(state)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.retries + 1),
            retry=retry_if_exception_type(TransientUpstreamError),
            wait=wait,
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._get(url)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _pace(self) -> None:
        gap = self.config.page_delay + self.penalty
        wait = self._last_request + gap - time.monotonic()
        if wait > 0:
            await self._sleep(wait)
        self._last_request = time.monotonic()

    async def _get(self, url: URL) -> Fetched:
        if self._session is None:
            raise RuntimeError("UpstreamClient used outside 'async with'")
        await self._pace()
        started = time.perf_counter()
        code = "error"
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                async with self._session.get(url, allow_redirects=False) as response:
                    code = str(response.status)
                    if response.status in (301, 302, 303, 307, 308):
                        url = self._redirect(url, response.headers.get("Location"))
                        continue
                    return await self._read(response)
            raise PermanentUpstreamError(f"more than {_MAX_REDIRECTS} redirects from {url}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            raise UpstreamUnavailable(
                f"{self.config.name}: {reason or type(exc).__name__}"
            ) from None
        finally:
            self._metrics.upstream_requests.labels(self.config.name, code).inc()
            self._metrics.upstream_duration.labels(self.config.name).observe(
                time.perf_counter() - started
            )

    def _redirect(self, url: URL, location: str | None) -> URL:
        if not location:
            raise PermanentUpstreamError(f"redirect without Location from {url}")
        target = url.join(URL(location))
        if target.host != url.host and not self.config.follow_redirects:
            raise PermanentUpstreamError(
                f"refusing redirect from {url.host} to another host ({target.host}); "
                "set follow_redirects = true for this upstream to allow it"
            )
        return target

    async def _read(self, response: aiohttp.ClientResponse) -> Fetched:
        name = self.config.name
        if response.status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            self.penalty = min(_PENALTY_CAP, max(1.0, self.penalty * 2))
            raise RateLimited(f"{name}: rate limited (429)", retry_after=retry_after)
        if response.status >= 500 or response.status == 408:
            raise UpstreamUnavailable(f"{name}: HTTP {response.status}", status=response.status)
        if response.status != 200:
            raise PermanentUpstreamError(
                f"{name}: HTTP {response.status} for {response.url.path}", status=response.status
            )
        limit = self.config.max_response_bytes
        if response.content_length is not None and response.content_length > limit:
            raise BadResponse(
                f"{name}: response of {response.content_length} bytes is over the {limit}-byte cap"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise BadResponse(f"{name}: response over the {limit}-byte cap")
            chunks.append(chunk)
        try:
            body = b"".join(chunks).decode("utf-8")
            page = parse_page(body, max_entry_chars=self.config.max_entry_bytes)
        except (UnicodeDecodeError, MalformedPage) as exc:
            raise BadResponse(f"{name}: unreadable response: {exc}") from None
        self.penalty = self.penalty / 2 if self.penalty > 0.05 else 0.0
        return Fetched(page, _date(response.headers.get("Date")))
