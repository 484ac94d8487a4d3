"""Configuration: one frozen pydantic tree, loaded once from TOML and passed down explicitly."""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from sync.credentials import check_ca_file, check_client_cert, resolve_proxy, resolve_secret
from sync.errors import ConfigError

__all__ = [
    "DEFAULT_VIEW",
    "ApiConfig",
    "Config",
    "EnrichRule",
    "FilterConfig",
    "LoggingConfig",
    "MirrorConfig",
    "OverrideRule",
    "StorageConfig",
    "UpstreamConfig",
    "config_from_mapping",
    "load_config",
    "parse_duration",
]

# One served view today; the store and API already take a view name so that per-team views
# become an addition, not a rewrite.
DEFAULT_VIEW = "default"
CONFIG_ENV = "SUBREGISTRY_CONFIG"
Status = Literal["active", "deprecated", "deleted"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as "90", "15m", "1h30m" or "2d"."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration such as '15m'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return float(text)
        except ValueError:
            pass
        parts = _DURATION.findall(text)
        if parts and _DURATION.sub("", text).strip() == "":
            return sum(float(n) * _UNITS[u] for n, u in parts)
    raise ValueError(f"invalid duration {value!r}: use seconds or a string such as '15m', '1h30m'")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_globs(globs: tuple[str, ...]) -> tuple[str, ...]:
    for glob in globs:
        if not glob or glob.count("[") != glob.count("]"):
            raise ValueError(f"invalid glob {glob!r}")
        fnmatch.translate(glob)
    return globs


class FilterConfig(_Frozen):
    """Which stored entries are served. Every list empty or absent means "no opinion"."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_regex: tuple[str, ...] = ()
    statuses: tuple[Status, ...] = ("active", "deprecated", "deleted")
    registry_types: tuple[str, ...] | None = None
    remotes: bool = True
    transports: tuple[str, ...] | None = None
    latest_versions: int | None = Field(default=None, ge=1)

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_globs(value)

    @field_validator("exclude_regex")
    @classmethod
    def _regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
        return value


class EnrichRule(_Frozen):
    """Extra facts served under the mirror's own `_meta` key for names matching a glob."""

    match: str
    meta: dict[str, Any]

    @field_validator("match")
    @classmethod
    def _glob(cls, value: str) -> str:
        return _check_globs((value,))[0]


class OverrideRule(_Frozen):
    """The mirror's own decision about one server (all versions, or one)."""

    name: str
    version: str | None = None
    status: Status | None = None
    status_message: str | None = Field(default=None, max_length=500)

    @field_validator("name")
    @classmethod
    def _glob(cls, value: str) -> str:
        return _check_globs((value,))[0]


class UpstreamConfig(_Frozen):
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
    headers: dict[str, Annotated[SecretStr, BeforeValidator(resolve_secret)]] = Field(
        default_factory=dict
    )
    # None: HTTP(S)_PROXY / NO_PROXY from the environment decide; set, it is used for every
    # request of this upstream. A secret as a whole, since it may carry credentials.
    proxy: Annotated[SecretStr | None, BeforeValidator(resolve_proxy)] = None
    ca_file: Path | None = None  # added to the system trust store, not replacing it
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

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            check_ca_file(value)
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


class StorageConfig(_Frozen):
    path: Path = Path("data/subregistry.db")


class MirrorConfig(_Frozen):
    namespace: str = Field(
        default="io.github.mcp-subregistry",
        pattern=r"^[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)+(/[a-zA-Z0-9._-]+)?$",
        description="reverse-DNS key under which the mirror serves its own _meta",
    )


class ApiConfig(_Frozen):
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

    @field_validator("base_path")
    @classmethod
    def _base_path(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not re.match(r"^(/[A-Za-z0-9._~-]+)+$", value):
            raise ValueError("must be empty or a path such as '/registry'")
        return value


class LoggingConfig(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


def _default_upstreams() -> tuple[UpstreamConfig, ...]:
    return (UpstreamConfig(name="official", url="https://registry.modelcontextprotocol.io"),)


class Config(_Frozen):
    storage: StorageConfig = StorageConfig()
    mirror: MirrorConfig = MirrorConfig()
    api: ApiConfig = ApiConfig()
    logging: LoggingConfig = LoggingConfig()
    upstreams: tuple[UpstreamConfig, ...] = Field(default_factory=_default_upstreams, min_length=1)
    filter: FilterConfig = FilterConfig()
    enrich: tuple[EnrichRule, ...] = ()
    override: tuple[OverrideRule, ...] = ()

    @field_validator("upstreams")
    @classmethod
    def _unique(cls, value: tuple[UpstreamConfig, ...]) -> tuple[UpstreamConfig, ...]:
        names = [u.name for u in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"upstream names must be unique; repeated: {', '.join(duplicates)}")
        return value

    def upstream(self, name: str) -> UpstreamConfig:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise ConfigError(f"no upstream named {name!r} (configured: {self.upstream_names()})")

    def upstream_names(self) -> str:
        return ", ".join(u.name for u in self.upstreams)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ""
        for part in error["loc"]:
            key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        lines.append(f"{key or '(top level)'}: {error['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def config_from_mapping(data: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML document, naming every offending key in the error."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_config(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read `path`, else `$SUBREGISTRY_CONFIG`, else the built-in defaults.

    Relative paths inside a file (the database, file upstreams) are resolved against the
    working directory, as operators expect from a command-line daemon.
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_mapping(data)
