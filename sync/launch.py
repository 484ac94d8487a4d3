"""How a registry package is launched: the exact argv a client builds from a `packages[]`
entry.

Shared by the catalogue page (the install hint shown to people) and the policy exporters (the
`serverCommand` an allowlist admits, which clients compare argument by argument, so a single
extra `-y` would block the server). Pure: no I/O, no imports from the project.

The rule is VS Code's, the client that installs registry entries into `mcp.json` (source:
microsoft/vscode `src/vs/platform/mcp/common/mcpManagementService.ts`,
`AbstractCommonMcpManagementService.getMcpServerConfigurationFromManifest`, `getCommandName`
and `processArguments`):

- the command comes from the registry type alone (`npm` → `npx`, `pypi` → `uvx`, `oci` →
  `docker`, `nuget` → `dnx`); `runtimeHint` is never read, and no `-y` is added;
- `oci` starts with `run -i --rm`, then the runtime arguments, then `-e NAME` per environment
  variable, then the image (`identifier:version` when a version is given);
- otherwise the runtime arguments, then the package (`identifier@version`,
  `identifier==version` for pypi, `identifier@version --yes` for nuget, plus `--` when package
  arguments follow), then the package arguments;
- a positional argument contributes its `value`; a named one its `name`, then its `value`; an
  argument of any other type is skipped.

Where VS Code would prompt the user (a named argument with no value but a description or a
default, a positional one with no value) or would substitute a `{variable}`, the argv is not
fixed: no allowlist can name it in advance, so `argv` returns None. A `{variable}` is any
`{identifier}` in a value, declared or not: the registry schema reserves that syntax for
values the client fills in. A positional argument with only a `valueHint` counts as input too:
the schema says a hint "is not part of the command line" (VS Code writes it literally, a
placeholder the user then has to replace). A named argument marked `isRequired` without a
value needs input as well.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["argv", "hint"]

_COMMANDS = {"npm": "npx", "pypi": "uvx", "oci": "docker", "nuget": "dnx"}
_VARIABLE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_INDEX = re.compile(r"0|[1-9][0-9]*")


class _NotFixed(Exception):
    """The argv depends on what the user types when installing."""


# What to put where the user must type something: strict mode refuses (an allowlist needs
# the exact argv), the page's hint shows a `<placeholder>` for a person to fill in.
_Fill = Callable[[str], str]


def _refuse(_: str) -> str:
    raise _NotFixed


def _placeholder(label: str) -> str:
    return f"<{label}>"


def _objects(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _fixed(value: Any, fill: _Fill) -> str:
    if not isinstance(value, str):
        return fill("value")
    return _VARIABLE.sub(lambda m: fill(m.group(0)[1:-1]), value)


def _label(arg: Mapping[str, Any], fallback: str) -> str:
    label = arg.get("valueHint")
    return label if isinstance(label, str) and label else fallback


def _arguments(arguments: list[Mapping[str, Any]], fill: _Fill) -> list[str]:
    words: list[str] = []
    for arg in arguments:
        kind, value = arg.get("type"), arg.get("value")
        if kind == "positional":
            # No value: a hint, a default, or nothing; the user supplies it.
            words.append(_fixed(value, fill) if value else fill(_label(arg, "value")))
        elif kind == "named":
            name = arg.get("name")
            if not name:
                continue  # VS Code skips it (with a notice)
            words.append(_fixed(name, fill))
            if value:
                words.append(_fixed(value, fill))
            elif arg.get("isRequired") is True or arg.get("description") or "default" in arg:
                words.append(fill(_label(arg, str(name).lstrip("-") or "value")))
    return words


def _env_names(package: Mapping[str, Any], fill: _Fill) -> list[str]:
    # VS Code collects the variables in a JS object, then walks Object.entries: duplicates
    # collapse onto their first position, and integer-like keys come first, ascending.
    names: list[str] = []
    for var in _objects(package.get("environmentVariables")):
        name = var.get("name")
        if not isinstance(name, str) or not name:
            name = fill("NAME")
        if name not in names:
            names.append(name)
    index = sorted((n for n in names if _INDEX.fullmatch(n) and int(n) < 2**32 - 1), key=int)
    return index + [n for n in names if n not in index]


def argv(package: Mapping[str, Any]) -> list[str] | None:
    """The command and arguments a client runs for `package` (see the module docstring for
    the rule and its source); None when its registry type has no launcher (mcpb, or a type
    newer than this code), it names no identifier, or the command line holds a value the user
    supplies at install time."""
    return _build(package, _refuse)


def hint(package: Mapping[str, Any]) -> list[str] | None:
    """`argv` for a person to copy: each value the user supplies shown as a `<placeholder>`
    instead of making the whole command unknown."""
    return _build(package, _placeholder)


def _build(package: Mapping[str, Any], fill: _Fill) -> list[str] | None:
    kind = package.get("registryType")
    identifier = package.get("identifier")
    version = package.get("version")
    if not isinstance(kind, str) or kind not in _COMMANDS:
        return None
    if not isinstance(identifier, str) or not identifier:
        return None
    version = version if isinstance(version, str) else ""
    raw_package_args = package.get("packageArguments")
    package_args = _objects(raw_package_args)
    words = [_COMMANDS[kind]]
    try:
        if kind == "oci":
            words += ["run", "-i", "--rm"]
        words += _arguments(_objects(package.get("runtimeArguments")), fill)
        if kind == "oci":
            for name in _env_names(package, fill):
                words += ["-e", name]
            words.append(f"{identifier}:{version}" if version else identifier)
        elif kind == "pypi":
            words.append(f"{identifier}=={version}" if version else identifier)
        else:
            words.append(f"{identifier}@{version}" if version else identifier)
            if kind == "nuget":
                words.append("--yes")
                if isinstance(raw_package_args, list) and raw_package_args:
                    words.append("--")
        words += _arguments(package_args, fill)
    except _NotFixed:
        return None
    return words
