"""Verifying OIDC access tokens (JWTs) with the keys the issuer publishes.

The keys come from the issuer's discovery document (`{issuer}/.well-known/openid-configuration`,
whose `issuer` must be the configured one) and the JWKS it names (over https like discovery;
plain http only from a loopback issuer to a loopback address). They are cached: fetched again
`jwks_ttl` after the last fetch, in the background while the cached ones go on verifying (a
withdrawn key stops verifying once that fetch is done), and at most once per `jwks_refresh` when
a token names a key id the cache lacks (a rotation is picked up at once, a flood of made-up ids
costs the issuer one request per interval, not one per token). While the issuer is down, the
keys last fetched go on verifying (an outage of the issuer is not one of the views: a withdrawn
key could only be learnt from a reachable issuer anyway), the issuer is asked again at most once
per `jwks_refresh` (`oidc.keys_stale` each time it fails), and only a token whose key the cache
lacks is a 503. Fetches are bounded in time and size, the body read whole however it arrives;
whatever goes wrong with one (an error, a body too large, too deeply nested or not the
document) is a failed fetch. A token is checked against the configured algorithms only, each
key only for an algorithm its type fits, so neither `alg: none` nor an HMAC keyed with a public
key is ever accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import jwt
import structlog
from aiohttp import web
from yarl import URL

from sync.credentials import tls_context
from sync.viewconfig import AuthConfig, is_loopback

__all__ = [
    "OIDC",
    "Forbidden",
    "KeysUnavailable",
    "TokenRejected",
    "Verifiers",
    "oidc_ctx",
]

log = structlog.get_logger("sync.serve.oidc")

FETCH_TIMEOUT = 10.0  # seconds for one discovery or JWKS request
FETCH_LIMIT = 1 << 20  # bytes: a discovery document or key set is a few kilobytes
# The key types (and curves) each algorithm can be verified with.
_FITS: dict[str, tuple[str, frozenset[str] | None]] = {
    **{a: ("RSA", None) for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


class TokenRejected(Exception):
    """The token is not one this view accepts (401 invalid_token)."""


class Forbidden(Exception):
    """A valid token without the claims this view requires (403 insufficient_scope)."""


class KeysUnavailable(Exception):
    """The issuer's keys cannot be had now; the token may be fine (503)."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = max(1, math.ceil(retry_after))


def _one_line(exc: BaseException) -> str:
    """The error as one short log line: an issuer's text is neither trusted nor bounded."""
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fits(jwk: dict[str, Any], alg: str) -> bool:
    kty, curves = _FITS.get(alg, ("", None))
    return (
        jwk.get("kty") == kty
        and (curves is None or (isinstance(jwk.get("crv"), str) and jwk["crv"] in curves))
        and jwk.get("alg", alg) == alg
        and jwk.get("use", "sig") == "sig"
    )


class KeyCache:
    """One issuer's published keys, as last fetched."""

    def __init__(self, issuer: str, session: Callable[[], aiohttp.ClientSession]) -> None:
        self.issuer = issuer
        self._session = session
        self._lock = asyncio.Lock()
        self._jwks_uri: str | None = None
        self._keys: list[dict[str, Any]] = []
        self._parsed: dict[tuple[int, str], jwt.PyJWK] = {}
        self._fetched = -math.inf  # when the keys were last fetched successfully
        self._tried = -math.inf  # when they were last fetched, successfully or not
        self._failing = False
        self._behind: asyncio.Task[None] | None = None  # a fetch no request waits for

    async def keys_for(self, kid: str | None, auth: AuthConfig) -> list[tuple[int, dict[str, Any]]]:
        """The keys that may have signed a token naming `kid` (any key when it names none)."""
        if self._fetched == -math.inf:
            # No keys yet: a request can only wait for the first ones.
            if not self._failing or self._due(auth):
                await self._refresh(auth, self._tried)
            if self._failing:
                self._unavailable(auth)
        elif time.monotonic() - self._fetched >= auth.jwks_ttl and (
            not self._failing or self._due(auth)
        ):
            # The keys at hand go on verifying while newer ones are fetched: no request waits on
            # the issuer for them, and while it is down the view stays readable (a withdrawn key
            # could only be learnt from a reachable issuer anyway).
            self._refresh_behind(auth)
        found = self._matching(kid)
        if found or kid is None:
            return found
        if self._behind is not None and not self._behind.done():
            await asyncio.shield(self._behind)  # the fetch under way may bring the key
        elif self._due(auth):
            await self._refresh(auth, self._tried)
        found = self._matching(kid)
        if not found and self._failing:
            self._unavailable(auth)  # the key may well be published: the issuer is down
        return found

    def key(self, index: int, alg: str) -> jwt.PyJWK:
        parsed = self._parsed.get((index, alg))
        if parsed is None:
            parsed = self._parsed[index, alg] = jwt.PyJWK(self._keys[index], algorithm=alg)
        return parsed

    async def close(self) -> None:
        if self._behind is not None:
            self._behind.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._behind

    def _matching(self, kid: str | None) -> list[tuple[int, dict[str, Any]]]:
        return [(i, k) for i, k in enumerate(self._keys) if kid is None or k.get("kid") == kid]

    def _due(self, auth: AuthConfig) -> bool:
        """Whether the issuer may be asked again (once per jwks_refresh, whatever the tokens)."""
        return time.monotonic() - self._tried >= auth.jwks_refresh

    def _refresh_behind(self, auth: AuthConfig) -> None:
        if self._behind is None or self._behind.done():
            self._behind = asyncio.create_task(self._refresh(auth, self._tried))

    async def _refresh(self, auth: AuthConfig, seen: float) -> None:
        """Fetch the keys, once for the requests that wait together; the outcome is in
        `_failing`, so a background fetch has nothing to raise."""
        async with self._lock:
            if self._tried != seen:
                return  # another request fetched while this one waited: its outcome stands
            self._tried = time.monotonic()
            stale = self._tried - self._fetched >= auth.jwks_ttl
            try:
                keys = await self._fetch(refresh_discovery=stale)
            except Exception as exc:  # whatever the issuer sends or fails to: a failed fetch
                self._failing = True
                if stale and self._fetched > -math.inf:
                    log.warning(
                        "oidc.keys_stale",
                        issuer=self.issuer,
                        error=_one_line(exc),
                        age_s=round(self._tried - self._fetched),
                        retry_in_s=auth.jwks_refresh,
                    )
                else:
                    log.warning("oidc.keys_unavailable", issuer=self.issuer, error=_one_line(exc))
                return
            if self._failing:
                log.info("oidc.keys_available", issuer=self.issuer)
            self._failing = False
            self._keys, self._parsed, self._fetched = keys, {}, self._tried

    def _unavailable(self, auth: AuthConfig) -> NoReturn:
        wait = auth.jwks_refresh - (time.monotonic() - self._tried)
        raise KeysUnavailable(f"the keys of {self.issuer} cannot be fetched", wait)

    async def _fetch(self, *, refresh_discovery: bool) -> list[dict[str, Any]]:
        if self._jwks_uri is None or refresh_discovery:
            document = await self._get(
                self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            )
            # OpenID Connect Discovery §4.3: the document must name the issuer it was asked of.
            if document.get("issuer") != self.issuer:
                raise ValueError(f"discovery names issuer {document.get('issuer')!r}")
            uri = document.get("jwks_uri")
            if not isinstance(uri, str):
                raise ValueError("discovery has no jwks_uri")
            self._jwks_uri = self._checked_jwks_uri(uri)
        keys = (await self._get(self._jwks_uri)).get("keys")
        if not isinstance(keys, list):
            raise ValueError("the JWKS has no keys")
        return [k for k in keys if isinstance(k, dict)]

    def _checked_jwks_uri(self, uri: str) -> str:
        """The keys travel as securely as discovery: https, or plain http only from a loopback
        issuer to a loopback address (the rule the configured `issuer` follows)."""
        url = URL(uri)
        if url.scheme == "https" and url.host:
            return uri
        plain_issuer = URL(self.issuer).scheme == "http"  # AuthConfig: only on loopback
        if url.scheme == "http" and plain_issuer and is_loopback(url.host):
            return uri
        raise ValueError(f"discovery's jwks_uri {uri[:200]!r} is not https (or loopback http)")

    async def _get(self, url: str) -> dict[str, Any]:
        async with self._session().get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered {response.status}")
            # The whole body, however many reads it takes, but never more than the limit.
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > FETCH_LIMIT:
                    raise ValueError(f"{url} sent more than {FETCH_LIMIT} bytes")
        document = json.loads(body)  # RecursionError for a deeply nested body: a failed fetch
        if not isinstance(document, dict):
            raise ValueError(f"{url} sent no JSON object")
        return document


def _describe(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the token has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the token is not valid yet"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "the token is for another audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "the token is from another issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token lacks the claim {exc.claim!r}"
    return "the token is malformed or its claims are invalid"


def _holds(claims: dict[str, Any], required: dict[str, tuple[str, ...]]) -> str | None:
    """The first required claim the token does not satisfy, or None."""
    for claim, wanted in required.items():
        value = claims.get(claim)
        held = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if not any(isinstance(v, str) and v in wanted for v in held):
            return claim
    return None


class Verifiers:
    """Key caches per issuer and HTTP sessions per CA bundle, for every view's OIDC auth."""

    def __init__(self) -> None:
        self._caches: dict[tuple[str, Path | None], KeyCache] = {}
        self._sessions: dict[Path | None, aiohttp.ClientSession] = {}

    def _session(self, ca_file: Path | None) -> aiohttp.ClientSession:
        session = self._sessions.get(ca_file)
        if session is None:
            session = self._sessions[ca_file] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls_context(ca_file, None, None), limit=8),
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
                trust_env=False,
            )
        return session

    async def verify(self, token: str, auth: AuthConfig) -> dict[str, Any]:
        """The token's claims, once signature, times, issuer, audience and required claims
        check out; TokenRejected, Forbidden or KeysUnavailable otherwise."""
        # AuthConfig refuses an oidc auth without them.
        assert auth.issuer is not None
        assert auth.audience is not None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenRejected("the token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in auth.algorithms or alg not in _FITS:
            raise TokenRejected(f"the algorithm {str(alg)[:20]!r} is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("the token's key id is not a string")
        key = (auth.issuer, auth.ca_file)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = KeyCache(auth.issuer, lambda: self._session(key[1]))
        candidates = [i for i, jwk in await cache.keys_for(kid, auth) if _fits(jwk, alg)]
        for index in candidates:
            try:
                pyjwk = cache.key(index, alg)
            except jwt.PyJWTError:
                continue  # a key the issuer published that cannot be used: not this one
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    pyjwk,
                    algorithms=[alg],
                    audience=auth.audience,
                    issuer=auth.issuer,
                    leeway=auth.leeway,
                    options={"require": ["exp", "iss", "aud"]},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError as exc:
                raise TokenRejected(_describe(exc)) from None
            missing = _holds(claims, auth.required_claims)
            if missing is not None:
                raise Forbidden(f"the token's {missing!r} claim grants no access to this view")
            return claims
        if not candidates:
            raise TokenRejected("no key of the issuer matches the token")
        raise TokenRejected("the token's signature does not verify")

    async def close(self) -> None:
        for cache in self._caches.values():
            await cache.close()
        for session in self._sessions.values():
            with contextlib.suppress(Exception):
                await session.close()
        self._sessions.clear()


OIDC = web.AppKey("oidc_verifiers", Verifiers)


async def oidc_ctx(app: web.Application) -> AsyncIterator[None]:
    """The verifiers live as long as the application; their sessions close with it."""
    verifiers = app[OIDC] = Verifiers()
    try:
        yield
    finally:
        await verifiers.close()
