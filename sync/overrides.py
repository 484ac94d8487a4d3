"""Settings from the environment, and the path rule, derived from the configuration models.

Every scalar setting has one variable: `SUBREGISTRY_` then the keys from the document's root,
upper-cased and joined by `__` (`SUBREGISTRY_API__PORT`, `SUBREGISTRY_LOGGING__LEVEL`). An
entry of a named list table is addressed by its name, upper-cased with `-` written `_`
(`SUBREGISTRY_UPSTREAMS__MY_MIRROR__INTERVAL` for `name = "my-mirror"`). The names come from
the models, so a setting added to a model has its variable at once; nothing here lists keys.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr

from sync.errors import ConfigError

__all__ = ["ENV_PREFIX", "Loc", "apply_env", "resolve_paths"]

ENV_PREFIX = "SUBREGISTRY_"
Loc = tuple[str | int, ...]
_SCALARS = (str, int, float, bool, Path, SecretStr)


def _unwrap(annotation: Any) -> Any:
    """The type behind `X | None` and `Annotated[X, ...]`."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            kept = [a for a in get_args(annotation) if a is not type(None)]
            if len(kept) != 1:
                return annotation
            annotation = kept[0]
        else:
            return annotation


def _is_path(annotation: Any) -> bool:
    inner = _unwrap(annotation)
    return isinstance(inner, type) and issubclass(inner, Path)


def _is_paths(annotation: Any) -> bool:
    """A tuple or list of paths."""
    inner = _unwrap(annotation)
    args = [a for a in get_args(inner) if a is not Ellipsis]
    return get_origin(inner) in (tuple, list) and bool(args) and all(map(_is_path, args))


def _model(annotation: Any) -> type[BaseModel] | None:
    inner = _unwrap(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _is_scalar(annotation: Any) -> bool:
    inner = _unwrap(annotation)
    if get_origin(inner) is Literal:
        return True
    return isinstance(inner, type) and issubclass(inner, _SCALARS)


@cache
def _path_fields(model: type[BaseModel]) -> tuple[frozenset[str], frozenset[str]]:
    single = {n for n, f in model.model_fields.items() if _is_path(f.annotation)}
    many = {n for n, f in model.model_fields.items() if _is_paths(f.annotation)}
    return frozenset(single), frozenset(many)


def resolve_paths(model: type[BaseModel], data: dict[str, Any], base: Path) -> dict[str, Any]:
    """`data` (one table of a file, before validation) with each relative value of a
    path-typed field of `model` joined to `base`; anything else is left for validation."""

    def join(value: Any) -> Any:
        if isinstance(value, str | Path) and not Path(value).is_absolute():
            return str(base / value)
        return value

    single, many = _path_fields(model)
    changed = {k: join(v) for k, v in data.items() if k in single}
    changed |= {
        k: [join(item) for item in v]
        for k, v in data.items()
        if k in many and isinstance(v, list | tuple)
    }
    return {**data, **changed} if changed else data


@dataclass(frozen=True, slots=True)
class _Target:
    loc: Loc
    path: bool


def _token(name: str) -> str:
    return name.upper().replace("-", "_")


def _settings(model: type[BaseModel], var: str, loc: Loc) -> Iterator[tuple[str, _Target]]:
    for name, field in model.model_fields.items():
        nested = _model(field.annotation)
        if nested is not None:
            yield from _settings(nested, f"{var}{name.upper()}__", (*loc, name))
        elif _is_scalar(field.annotation):
            yield f"{var}{name.upper()}", _Target((*loc, name), _is_path(field.annotation))


def _targets(
    model: type[BaseModel], lists: Mapping[str, list[Any]]
) -> tuple[dict[str, _Target], dict[str, list[str]]]:
    """Every variable the document can take, and the list prefixes that name two entries."""
    targets = dict(_settings(model, ENV_PREFIX, ()))
    ambiguous: dict[str, list[str]] = {}
    for key, entries in lists.items():
        item = _model(get_args(_unwrap(model.model_fields[key].annotation))[0])
        assert item is not None, f"{key} is not a list of tables"
        seen: dict[str, list[str]] = {}
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            name = entry.get("name") if isinstance(entry, dict) else None
            if isinstance(name, str):
                prefix = f"{ENV_PREFIX}{key.upper()}__{_token(name)}__"
                seen.setdefault(prefix, []).append(name)
                targets.update(_settings(item, prefix, (key, index)))
        ambiguous |= {prefix: names for prefix, names in seen.items() if len(names) > 1}
    # Two entries behind one variable: refuse it rather than pick one.
    targets = {v: t for v, t in targets.items() if not v.startswith(tuple(ambiguous))}
    return targets, ambiguous


def _unknown(
    var: str, targets: Mapping[str, _Target], ambiguous: Mapping[str, list[str]], lists: list[str]
) -> str:
    for prefix, names in ambiguous.items():
        if var.startswith(prefix):
            return f"{var}: {' and '.join(map(repr, names))} both read as {prefix[:-2]}"
    for key in lists:
        prefix = f"{ENV_PREFIX}{key.upper()}__"
        token = var.removeprefix(prefix).split("__")[0]
        if var.startswith(prefix) and not any(t.startswith(f"{prefix}{token}__") for t in targets):
            return f"{var}: no entry of [[{key}]] is named {token.lower().replace('_', '-')!r}"
    close = difflib.get_close_matches(var, list(targets), n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{var}: not a setting{hint}"


def _place(data: dict[str, Any], loc: Loc, value: str) -> None:
    node: Any = data
    for step, after in itertools.pairwise(loc):
        if isinstance(step, int):
            node = node[step]
        else:
            node = node.setdefault(step, [] if isinstance(after, int) else {})
        if not isinstance(node, dict | list):
            return  # the file's own value is malformed here: validation names it
    if isinstance(node, dict):
        node[loc[-1]] = value


def apply_env(
    data: dict[str, Any],
    model: type[BaseModel],
    env: Mapping[str, str],
    *,
    lists: Mapping[str, list[Any]],
    reserved: frozenset[str],
) -> dict[Loc, str]:
    """Write every `SUBREGISTRY_…` variable of `env` into `data` (a parsed file, or {} for the
    built-in defaults) and return which variable set which key. `lists` holds the entries of
    each named list table when `data` has none (its defaults). A variable that names no
    setting is an error, so that a typo cannot silently leave a default in force."""
    given = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) and k not in reserved}
    if not given:
        return {}
    entries = {key: data.get(key, defaults) for key, defaults in lists.items()}
    targets, ambiguous = _targets(model, entries)
    errors = [
        _unknown(v, targets, ambiguous, list(lists)) for v in sorted(given) if v not in targets
    ]
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    origins: dict[Loc, str] = {}
    for var in sorted(given):
        target = targets[var]
        key = str(target.loc[0])
        if key in lists and key not in data:
            data[key] = copy.deepcopy(lists[key])
        # The environment belongs to the shell that started the daemon: a relative path in
        # it means that shell's working directory, not the folder of the file.
        value = str(Path(given[var]).absolute()) if target.path else given[var]
        _place(data, target.loc, value)
        origins[target.loc] = var
    return origins
