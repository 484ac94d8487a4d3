"""Named views and read authentication: who sees which subset of the mirror, and where.

A view is a complete registry at its own base path, computed from the same stored entries as
the default view and always a subset of it: its rules run on top of the default view's result,
never around the global rules. Each view (and the default one, under `[api.auth]`) says how a
reader proves who it is.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from yarl import URL

from sync.credentials import CaFile
from sync.ruleconfig import Duration, EnrichRule, FilterConfig, Frozen, OverrideRule

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "B64TOKEN",
    "AuthConfig",
    "ViewConfig",
    "check_base_path",
    "is_loopback",
    "read_tokens",
]

# JWS algorithms with a public verification key. HS* would let anyone holding the issuer's
# public key (which is public) forge tokens; `none` is no signature at all.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
# RFC 6750 §2.1: the only token an `Authorization: Bearer` header can carry.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_SEGMENT = r"[A-Za-z0-9._~-]+"
# Path segments a view's base cannot hold: they would read as the API's own prefixes.
_RESERVED_SEGMENTS = frozenset({"v0", "v0.1", ".well-known"})
_BEARER_KEYS = ("tokens_file", "tokens_env")
_OIDC_KEYS = (
    "issuer",
    "audience",
    "required_claims",
    "algorithms",
    "leeway",
    "jwks_refresh",
    "jwks_ttl",
    "ca_file",
)


def check_base_path(value: str, *, empty: bool) -> str:
    """A base path such as `/teams/payments`: no trailing slash, unreserved characters."""
    value = value.rstrip("/")
    if not value:
        if empty:
            return value
        raise ValueError("must be a path such as '/teams/payments'")
    if not re.fullmatch(rf"(/{_SEGMENT})+", value):
        raise ValueError("must be a path such as '/teams/payments' (letters, digits, . _ ~ -)")
    reserved = [s for s in value.split("/") if s in _RESERVED_SEGMENTS]
    if reserved:
        raise ValueError(f"cannot contain the segment {reserved[0]!r}: the API's own paths use it")
    return value


def read_tokens(text: str, source: str) -> tuple[str, ...]:
    """Tokens, one per line; blank lines and `#` comments are not tokens. A line outside RFC
    6750's b64token could never arrive in an Authorization header, so it would load and never
    match: it is refused, named by `source` and line, never shown (it may be a secret)."""
    tokens: list[str] = []
    # Only "\n" ends a line: splitlines() would also cut at \x1c or U+2028, turning one
    # malformed secret into two short "valid" ones.
    for number, line in enumerate(text.split("\n"), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not B64TOKEN.fullmatch(token):
            raise ValueError(
                f"{source}, line {number} is not an RFC 6750 bearer token "
                "(letters, digits and - . _ ~ + /, then = padding only)"
            )
        tokens.append(token)
    return tuple(dict.fromkeys(tokens))


def is_loopback(host: str | None) -> bool:
    """Whether plain http to `host` stays on this machine (the one place it is allowed)."""
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthConfig(Frozen):
    """How a reader of one view proves who it is.

    - `none`: anyone who reaches the port reads (privacy is the network's job).
    - `bearer`: one of a set of static tokens, read from `tokens_file` (one per line; a
      mounted Secret) and/or the variable `tokens_env`, when the configuration is loaded, so a
      reload (SIGHUP) reads them again.
    - `oidc`: a JWT from `issuer` for `audience`, with `required_claims` (each claim must
      hold at least one of the listed values), verified with the issuer's published keys.
    """

    type: Literal["none", "bearer", "oidc"] = "none"
    tokens_file: Path | None = None
    tokens_env: str | None = None
    issuer: str | None = None
    audience: str | None = None
    required_claims: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    leeway: Duration = Field(default=30.0, le=300.0)
    # An unknown `kid` fetches the keys again, at most this often (a flood of made-up kids
    # must not become a flood of requests to the issuer).
    jwks_refresh: Duration = Field(default=60.0, le=86400.0)
    # Keys are fetched again this long after the last fetch, so a key the issuer withdrew
    # stops verifying.
    jwks_ttl: Duration = Field(default=3600.0, ge=1.0)
    ca_file: CaFile = None  # added to the system trust store for the issuer
    _tokens: tuple[SecretStr, ...] = PrivateAttr(default=())

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        refused = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise ValueError(
                f"{refused[0]!r} is not allowed: use asymmetric ones, {list(ASYMMETRIC_ALGORITHMS)}"
            )
        if not value:
            raise ValueError("name at least one algorithm")
        return value

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = URL(value)
        if url.scheme == "https" and url.host:
            return value
        if url.scheme == "http" and is_loopback(url.host):
            return value  # a provider on this machine (development, tests)
        raise ValueError("must be an https URL (http only for a loopback address)")

    @model_validator(mode="after")
    def _by_type(self) -> AuthConfig:
        given = self.model_fields_set
        foreign = {
            "none": (*_BEARER_KEYS, *_OIDC_KEYS),
            "bearer": _OIDC_KEYS,
            "oidc": _BEARER_KEYS,
        }[self.type]
        stray = [key for key in foreign if key in given]
        if stray:
            raise ValueError(f"{stray[0]!r} does not apply to type {self.type!r}")
        if self.type == "bearer":
            self._tokens = tuple(SecretStr(t) for t in self._read_tokens())
            if not self._tokens:
                raise ValueError("bearer auth needs at least one token (tokens_file, tokens_env)")
        if self.type == "oidc" and (self.issuer is None or self.audience is None):
            raise ValueError("oidc auth needs 'issuer' and 'audience'")
        return self

    def _read_tokens(self) -> tuple[str, ...]:
        tokens: tuple[str, ...] = ()
        if self.tokens_file is not None:
            try:
                text = self.tokens_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(
                    f"cannot read tokens_file {self.tokens_file}: {exc.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise ValueError(f"tokens_file {self.tokens_file} is not UTF-8 text") from None
            tokens += read_tokens(text, f"tokens_file {self.tokens_file}")
        if self.tokens_env is not None:
            value = os.environ.get(self.tokens_env)
            if value is None:
                raise ValueError(f"environment variable {self.tokens_env} is not set")
            tokens += read_tokens(value, f"tokens_env {self.tokens_env}")
        return tuple(dict.fromkeys(tokens))

    @property
    def tokens(self) -> tuple[SecretStr, ...]:
        """The bearer tokens, as read when this configuration was loaded."""
        return self._tokens

    @property
    def enabled(self) -> bool:
        return self.type != "none"


class ViewConfig(Frozen):
    """One named view: a subset of the default view, at its own base path."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    base_path: str
    description: str = ""
    filter: FilterConfig = FilterConfig()
    enrich: tuple[EnrichRule, ...] = ()
    override: tuple[OverrideRule, ...] = ()
    auth: AuthConfig = AuthConfig()

    @field_validator("name")
    @classmethod
    def _not_default(cls, value: str) -> str:
        if value == "default":
            raise ValueError("'default' is the mirror's own view; name this one otherwise")
        return value

    @field_validator("base_path")
    @classmethod
    def _base_path(cls, value: str) -> str:
        return check_base_path(value, empty=False)
