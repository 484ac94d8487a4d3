"""The rule vocabulary, shared by the global rules and each named view: filters, enrichments,
overrides; and the frozen base every configuration model derives from."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sync.durations import parse_duration
from sync.overrides import resolve_paths

__all__ = [
    "BASE",
    "Duration",
    "EnrichRule",
    "FilterConfig",
    "Frozen",
    "OverrideRule",
    "Status",
    "check_globs",
]

BASE = "base"  # validation context: the folder of the file being read
Status = Literal["active", "deprecated", "deleted"]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _paths_from_the_file(cls, data: Any, info: ValidationInfo) -> Any:
        """A relative path written in a file means that file's folder, wherever the daemon
        starts (a unit's WorkingDirectory, a container's): for every path-typed setting, and
        before any validator looks at it."""
        base = (info.context or {}).get(BASE)
        if base is None or not isinstance(data, dict):
            return data
        return resolve_paths(cls, data, base)


def check_globs(globs: tuple[str, ...]) -> tuple[str, ...]:
    for glob in globs:
        if not glob or glob.count("[") != glob.count("]"):
            raise ValueError(f"invalid glob {glob!r}")
        fnmatch.translate(glob)
    return globs


class FilterConfig(Frozen):
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
        return check_globs(value)

    @field_validator("exclude_regex")
    @classmethod
    def _regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
        return value


class EnrichRule(Frozen):
    """Extra facts served under the mirror's own `_meta` key for names matching a glob."""

    match: str
    meta: dict[str, Any]

    @field_validator("match")
    @classmethod
    def _glob(cls, value: str) -> str:
        return check_globs((value,))[0]


class OverrideRule(Frozen):
    """The mirror's own decision about one server (all versions, or one)."""

    name: str
    version: str | None = None
    status: Status | None = None
    status_message: str | None = Field(default=None, max_length=500)

    @field_validator("name")
    @classmethod
    def _glob(cls, value: str) -> str:
        return check_globs((value,))[0]
