"""Configuration: one frozen pydantic tree, loaded once from TOML and passed down explicitly."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sync.credentials import CaFile, check_client_cert, resolve_proxy, resolve_secret
from sync.durations import parse_duration
from sync.errors import ConfigError
from sync.overrides import Loc, apply_env
from sync.ruleconfig import BASE, Duration, EnrichRule, FilterConfig, Frozen, OverrideRule
from sync.viewconfig import AuthConfig, ViewConfig, check_base_path

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_VIEW",
    "ApiConfig",
    "AuthConfig",
    "Config",
    "EnrichRule",
    "FilterConfig",
    "LoggingConfig",
    "MirrorConfig",
    "OverrideRule",
    "StorageConfig",
    "UpstreamConfig",
    "ViewConfig",
    "config_from_mapping",
    "load_config",
    "parse_duration",
]

# The view every mirror serves at `[api] base_path`; `[[views]]` add named subsets of it.
DEFAULT_VIEW = "default"
CONFIG_ENV = "SUBREGISTRY_CONFIG"
# Variables under the settings prefix that are not settings: the file's path, and build facts
# that `GET /v0.1/version` reports.
_NOT_SETTINGS = frozenset({CONFIG_ENV, "SUBREGISTRY_GIT_COMMIT", "SUBREGISTRY_BUILD_TIME"})
# The official registry asks aggregators to poll "regularly but infrequently" (about hourly).
MIN_HTTP_INTERVAL = 60.0
# A file is local: only the scheduler's own granularity bounds it.
MIN_FILE_INTERVAL = 1.0


def _in_base(value: object, info: ValidationInfo) -> object:
    """A secret's `file` written in a configuration file means that file's folder too, like
    every other path there."""
    base = (info.context or {}).get(BASE)
    if base is None or not isinstance(value, Mapping):
        return value
    path = value.get("file")
    if not isinstance(path, str) or not path or Path(path).is_absolute():
        return value
    return {**value, "file": str(Path(base) / path)}


def _secret(value: object, info: ValidationInfo) -> SecretStr:
    return resolve_secret(_in_base(value, info))


def _proxy(value: object, info: ValidationInfo) -> SecretStr | None:
    return resolve_proxy(_in_base(value, info))


class UpstreamConfig(Frozen):
    """One source of entries: an HTTP registry (`url`) or a local file (`path`)."""

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    url: str | None = None
    path: Path | None = None
    interval: Duration = 3600.0
    page_size: int = Field(default=100, ge=1, le=100)
    page_delay: Duration = 0.5
    timeout: Duration = 30.0
    retries: int = Field(default=5, ge=0, le=20)
    full_every: Duration = 86400.0
    overlap: Duration = 300.0
    max_staleness: Duration | None = None
    # Each a plain string, or { env = NAME } / { file = PATH } with an optional prefix.
    headers: dict[str, Annotated[SecretStr, BeforeValidator(_secret)]] = Field(default_factory=dict)
    # None: HTTP(S)_PROXY / NO_PROXY from the environment decide; set, it is used for every
    # request of this upstream. A secret as a whole, since it may carry credentials.
    proxy: Annotated[SecretStr | None, BeforeValidator(_proxy)] = None
    ca_file: CaFile = None  # added to the system trust store, not replacing it
    client_cert: Path | None = None  # PEM; may hold the key too
    client_key: Path | None = None
    max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_entry_bytes: int = Field(default=256 * 1024, ge=256)
    # A listing with more distinct entries than this in one pass is refused as malformed: an
    # upstream that invents entries forever must not fill the disk (4x the design scale).
    max_entries: int = Field(default=1_000_000, ge=1)
    follow_redirects: bool = False
    failure_threshold: int = Field(default=3, ge=1)
    circuit_max_delay: Duration = 6 * 3600.0
    filter: FilterConfig | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) base URL such as https://registry.example.com")
        return value.rstrip("/")

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("path") is not None and value < MIN_FILE_INTERVAL:
            raise ValueError(f"must be at least {MIN_FILE_INTERVAL:g}s for a file upstream")
        if info.data.get("url") is not None and value < MIN_HTTP_INTERVAL:
            raise ValueError(
                f"must be at least {MIN_HTTP_INTERVAL:g}s (1m) for an HTTP upstream: registries "
                "ask to be polled regularly but infrequently (the official one: about hourly)"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> UpstreamConfig:
        if (self.url is None) == (self.path is None):
            raise ValueError("set exactly one of 'url' (an HTTP registry) or 'path' (a file)")
        return self

    @model_validator(mode="after")
    def _network(self) -> UpstreamConfig:
        network = (self.proxy, self.ca_file, self.client_cert)
        if self.path is not None and any(v is not None for v in network):
            raise ValueError("proxy, ca_file and client_cert apply to 'url' upstreams only")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        if self.client_cert is not None:
            check_client_cert(self.client_cert, self.client_key)
        return self

    @property
    def staleness(self) -> float:
        return self.max_staleness if self.max_staleness is not None else 3 * self.interval


class StorageConfig(Frozen):
    """Where the mirror lives: a SQLite file (`path`, the default) or a PostgreSQL database
    (`url`), which replicas share and only the elected leader writes."""

    path: Path = Path("data/subregistry.db")
    url: str | None = Field(default=None, description="postgresql://user@host:5432/db")
    pool_size: int = Field(default=8, ge=1, le=100, description="read connections per replica")
    # A leader renews its lease three times per term; one that misses a whole term (stalled,
    # cut off) is deposed, and its commits are refused from then on.
    lease: Duration = Field(default=10.0, ge=1.0, le=300.0)
    # How often a replica reads the change serial: cached responses are at most this old.
    refresh: Duration = Field(default=1.0, gt=0, le=60.0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^postgres(ql)?://", value):
            raise ValueError("must be a PostgreSQL URL such as postgresql://user@host:5432/db")
        return value

    @property
    def postgres(self) -> bool:
        return self.url is not None


class MirrorConfig(Frozen):
    namespace: str = Field(
        default="io.github.mcp-subregistry",
        pattern=r"^[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)+(/[a-zA-Z0-9._-]+)?$",
        description="reverse-DNS key under which the mirror serves its own _meta",
    )


class ApiConfig(Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    base_path: str = ""
    stop_grace: Duration = 30.0
    cache_mb: float = Field(default=64.0, ge=0, description="rendered responses kept; 0 = off")
    header_timeout: Duration = Field(
        default=10.0, gt=0, description="a connection waiting this long for a request head closes"
    )
    max_connections: int = Field(
        default=1000, ge=1, description="open client connections; more evict the longest-waiting"
    )
    # "serve": /readyz is 200 while the store answers, however old its data (the mirror exists
    # to ride out upstream outages); "fresh": 503 once an upstream is past its max_staleness.
    readiness: Literal["serve", "fresh"] = "serve"
    # How readers of the default view prove who they are; each view has its own.
    auth: AuthConfig = AuthConfig()
    # The origin clients reach this mirror at (https://registry.example.com), for the
    # absolute URLs it publishes (protected-resource metadata); unset: each request's Host.
    public_url: str | None = None

    @field_validator("base_path")
    @classmethod
    def _base_path(cls, value: str) -> str:
        return check_base_path(value, empty=True)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/\s?#]+", value.rstrip("/")):
            raise ValueError("must be an origin such as https://registry.example.com (no path)")
        return value.rstrip("/") if value is not None else None


class LoggingConfig(Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


def _default_upstreams() -> tuple[UpstreamConfig, ...]:
    return (UpstreamConfig(name="official", url="https://registry.modelcontextprotocol.io"),)


class Config(Frozen):
    storage: StorageConfig = StorageConfig()
    mirror: MirrorConfig = MirrorConfig()
    api: ApiConfig = ApiConfig()
    logging: LoggingConfig = LoggingConfig()
    upstreams: tuple[UpstreamConfig, ...] = Field(default_factory=_default_upstreams, min_length=1)
    filter: FilterConfig = FilterConfig()
    enrich: tuple[EnrichRule, ...] = ()
    override: tuple[OverrideRule, ...] = ()
    views: tuple[ViewConfig, ...] = ()

    @field_validator("upstreams")
    @classmethod
    def _unique(cls, value: tuple[UpstreamConfig, ...]) -> tuple[UpstreamConfig, ...]:
        names = [u.name for u in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"upstream names must be unique; repeated: {', '.join(duplicates)}")
        return value

    @field_validator("views")
    @classmethod
    def _views_apart(
        cls, value: tuple[ViewConfig, ...], info: ValidationInfo
    ) -> tuple[ViewConfig, ...]:
        names = [v.name for v in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"view names must be unique; repeated: {', '.join(repeated)}")
        api = info.data.get("api")
        bases = [api.base_path if isinstance(api, ApiConfig) else ""]
        bases += [v.base_path for v in value]
        taken = sorted({b or "/" for b in bases if bases.count(b) > 1})
        if taken:
            raise ValueError(
                f"each view needs its own base_path (api.base_path included); shared: {taken[0]}"
            )
        return value

    def view(self, name: str) -> ViewConfig | None:
        """The named view's configuration; None for the default view."""
        if name == DEFAULT_VIEW:
            return None
        for view in self.views:
            if view.name == name:
                return view
        raise ConfigError(f"no view named {name!r} (configured: {self.view_names()})")

    def view_names(self) -> str:
        return ", ".join([DEFAULT_VIEW, *(v.name for v in self.views)])

    def upstream(self, name: str) -> UpstreamConfig:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise ConfigError(f"no upstream named {name!r} (configured: {self.upstream_names()})")

    def upstream_names(self) -> str:
        return ", ".join(u.name for u in self.upstreams)


def _describe(exc: ValidationError, origins: Mapping[Loc, str]) -> str:
    errors = exc.errors()
    locs = [e["loc"] for e in errors]
    lines = []
    for error in errors:
        if error["type"] == "too_short" and any(
            len(loc) > len(error["loc"]) and loc[: len(error["loc"])] == error["loc"]
            for loc in locs
        ):
            continue  # a list emptied by its own invalid entries: those errors say why
        key = ""
        for part in error["loc"]:
            key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        source = [var for loc, var in origins.items() if error["loc"][: len(loc)] == loc]
        where = f" (from {source[0]})" if source else ""
        lines.append(f"{key or '(top level)'}{where}: {error['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def config_from_mapping(
    data: Mapping[str, Any], *, base: Path | None = None, origins: Mapping[Loc, str] | None = None
) -> Config:
    """Validate a parsed TOML document, naming every offending key in the error (and the
    environment variable that set it). With `base`, relative paths mean that folder."""
    try:
        return Config.model_validate(data, context={BASE: base} if base is not None else None)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins or {})) from None


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (TOML files are UTF-8)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read `path`, else `$SUBREGISTRY_CONFIG`, else the built-in defaults; then the
    `SUBREGISTRY_<SECTION>__<KEY>` variables of `env` (default: the process environment) on
    top, so a container or unit can change one setting without its own copy of the file.

    A relative path written in the file means the file's folder, so the file means the same
    from any working directory; one from the environment or a built-in default (the quick
    start's `data/subregistry.db`) means the working directory.
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    data = {} if path is None else _read(path)
    defaults = [u.model_dump(exclude_unset=True) for u in _default_upstreams()]
    origins = apply_env(
        data, Config, env, lists={"upstreams": defaults, "views": []}, reserved=_NOT_SETTINGS
    )
    base = path.absolute().parent if path is not None else None
    return config_from_mapping(data, base=base, origins=origins)
