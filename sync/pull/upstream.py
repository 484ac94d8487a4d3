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
import structlog
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
from sync.pull.egress import BadProxy, Egress
from sync.pull.salvage import ENDS, salvage_page
from sync.pull.wire import MalformedPage, Page, parse_page

__all__ = ["Fetched", "UpstreamClient", "parse_retry_after"]

Sleep = Callable[[float], Awaitable[None]]
log = structlog.get_logger("sync.pull.upstream")
_MAX_REDIRECTS = 5
_RETRY_AFTER_CAP = 600.0
_PENALTY_CAP = 60.0
_SALVAGE_FACTOR = 16  # past this many times the cap, even one entry is not read to its end


@dataclass(frozen=True, slots=True)
class Fetched:
    page: Page
    date: datetime | None
    limit: int

    @property
    def full(self) -> bool:
        """The upstream filled the page: by its own rule more may follow."""
        return self.page.size >= self.limit


def origin(url: URL) -> tuple[str, str | None, int | None]:
    """Scheme, host and port: what credentials are bound to (RFC 6454)."""
    return (url.scheme, url.host, url.port)


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


def origin_text(value: tuple[str, str | None, int | None]) -> str:
    scheme, host, port = value
    return f"{scheme}://{host}:{port}"


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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.url is None:
            raise ValueError(f"upstream {config.name} has no url")
        self.config = config
        self._base = URL(config.url)
        self._origin = origin(self._base)
        # Credentials go only to the configured origin, so they are sent per request, never
        # set on the session (which would send them wherever a redirect points).
        self._secrets = {k: v.get_secret_value() for k, v in config.headers.items()}
        self._egress = Egress(config)
        self._metrics = metrics
        self._sleep = sleep
        self._backoff = backoff
        self._monotonic = monotonic
        self._session: aiohttp.ClientSession | None = None
        self._last_request = 0.0
        self.penalty = 0.0

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
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

    def list_url(
        self,
        cursor: str | None,
        since: str | None,
        *,
        include_deleted: bool,
        limit: int | None = None,
    ) -> URL:
        query = {"limit": str(limit or self.config.page_size)}
        if cursor:
            query["cursor"] = cursor
        if since:
            query["updated_since"] = since
        elif include_deleted:
            query["include_deleted"] = "true"
        return (self._base / "v0.1" / "servers").with_query(query)

    async def fetch_page(
        self,
        cursor: str | None,
        since: str | None,
        *,
        include_deleted: bool,
        limit: int | None = None,
        retries: int | None = None,
    ) -> Fetched:
        """One list page, retried on transient faults with backoff, jitter and Retry-After."""
        limit = limit or self.config.page_size
        url = self.list_url(cursor, since, include_deleted=include_deleted, limit=limit)
        initial, maximum = self._backoff
        exponential = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            advised = getattr(error, "retry_after", None)
            return float(advised) if advised is not None else exponential(state)

        attempts = (self.config.retries if retries is None else retries) + 1

        def warn(state: RetryCallState) -> None:
            # Without this the first word of an unreachable upstream came only when the last
            # retry gave up, half a minute later.
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "sync.retrying",
                upstream=self.config.name,
                attempt=state.attempt_number,
                attempts=attempts,
                wait_s=round(state.next_action.sleep, 3) if state.next_action else 0.0,
                reason=str(error) or type(error).__name__,
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            retry=retry_if_exception_type(TransientUpstreamError),
            wait=wait,
            sleep=self._sleep,
            before_sleep=warn,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._get(url, limit)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _pace(self) -> None:
        gap = self.config.page_delay + self.penalty
        wait = self._last_request + gap - self._monotonic()
        if wait > 0:
            await self._sleep(wait)
        self._last_request = self._monotonic()

    async def _get(self, url: URL, page_limit: int) -> Fetched:
        if self._session is None:
            raise RuntimeError("UpstreamClient used outside 'async with'")
        await self._pace()
        started = time.perf_counter()
        code = "error"
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                home = origin(url) == self._origin
                async with self._session.get(
                    url,
                    allow_redirects=False,
                    headers=self._secrets if home else None,
                    proxy=self._egress.proxy(url),
                    ssl=self._egress.tls(home=home),
                ) as response:
                    code = str(response.status)
                    if response.status in (301, 302, 303, 307, 308):
                        url = self._redirect(url, response.headers.get("Location"))
                        continue
                    return await self._read(response, page_limit)
            raise PermanentUpstreamError(f"more than {_MAX_REDIRECTS} redirects from {url}")
        except BadProxy as exc:
            raise PermanentUpstreamError(f"{self.config.name}: {exc}") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise PermanentUpstreamError(self._egress.hide(self._untrusted(exc))) from None
        except aiohttp.ClientHttpProxyError as exc:
            message = f"{self.config.name}: the proxy refused the tunnel (HTTP {exc.status})"
            if exc.status == 407:
                raise PermanentUpstreamError(f"{message}: check this upstream's proxy") from None
            raise UpstreamUnavailable(message, status=exc.status) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            raise UpstreamUnavailable(
                self._egress.hide(f"{self.config.name}: {reason or type(exc).__name__}")
            ) from None
        finally:
            self._metrics.upstream_requests.labels(self.config.name, code).inc()
            self._metrics.upstream_duration.labels(self.config.name).observe(
                time.perf_counter() - started
            )

    def _untrusted(self, exc: aiohttp.ClientConnectorCertificateError) -> str:
        error = exc.certificate_error
        why = getattr(error, "verify_message", None) or str(error)
        return (
            f"{self.config.name}: the TLS certificate of {exc.host}:{exc.port} is not accepted "
            f"({why}); if a private CA issued it, set ca_file for this upstream"
        )

    def _redirect(self, url: URL, location: str | None) -> URL:
        if not location:
            raise PermanentUpstreamError(f"redirect without Location from {url}")
        try:
            target = url.join(URL(location))
        except ValueError:
            raise PermanentUpstreamError(f"redirect to an invalid Location from {url}") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise PermanentUpstreamError(f"refusing redirect from {url} to {target.scheme}:")
        if origin(target) != self._origin and not self.config.follow_redirects:
            # Another port or scheme is another origin too (RFC 6454): https -> http would
            # also drop TLS.
            raise PermanentUpstreamError(
                f"refusing redirect from {origin_text(self._origin)} to another origin "
                f"({origin_text(origin(target))}); set follow_redirects = true for this upstream "
                "to allow it (its headers are never sent there)"
            )
        return target

    async def _salvage(self, response: aiohttp.ClientResponse, head: bytes, size: int) -> Fetched:
        cap = self.config.max_response_bytes
        tail = head[-ENDS:]
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > cap * _SALVAGE_FACTOR:
                raise BadResponse(f"{self.config.name}: a single entry of over {size} bytes")
            tail = (tail + chunk)[-ENDS:]
        try:
            page = salvage_page(head[:ENDS], tail, size, cap)
        except MalformedPage as exc:
            raise BadResponse(f"{self.config.name}: unreadable response: {exc}") from None
        return Fetched(page, _date(response.headers.get("Date")), 1)

    async def _read(self, response: aiohttp.ClientResponse, page_limit: int) -> Fetched:
        name = self.config.name
        if response.status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            self.penalty = min(_PENALTY_CAP, max(1.0, self.penalty * 2))
            raise RateLimited(f"{name}: rate limited (429)", retry_after=retry_after)
        if response.status >= 500 or response.status == 408:
            raise UpstreamUnavailable(f"{name}: HTTP {response.status}", status=response.status)
        if response.status == 407:
            raise PermanentUpstreamError(
                f"{name}: the proxy asks for credentials (HTTP 407): check this upstream's proxy"
            )
        if response.status != 200:
            raise PermanentUpstreamError(
                f"{name}: HTTP {response.status} for {response.url.path}", status=response.status
            )
        limit = self.config.max_response_bytes
        # A page of one entry is read to its end even over the cap (keeping only its two
        # ends): that is how a single oversized entry is named and stepped over.
        alone = page_limit == 1
        if response.content_length is not None and response.content_length > limit and not alone:
            raise BadResponse(
                f"{name}: response of {response.content_length} bytes is over the {limit}-byte cap"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            chunks.append(chunk)
            if size > limit:
                if not alone:
                    raise BadResponse(
                        f"{name}: response of {size} bytes is over the {limit}-byte cap"
                    )
                return await self._salvage(response, b"".join(chunks), size)
        try:
            page = parse_page(b"".join(chunks), max_entry_chars=self.config.max_entry_bytes)
        except MalformedPage as exc:
            raise BadResponse(f"{name}: unreadable response: {exc}") from None
        self.penalty = self.penalty / 2 if self.penalty > 0.05 else 0.0
        return Fetched(page, _date(response.headers.get("Date")), page_limit)
