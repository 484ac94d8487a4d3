"""What a configured command runs: the registry package (type, identifier, pinned version)
behind `npx -y @scope/pkg@1.2.3`, `uvx pkg==1.2.3`, `docker run -i --rm image:tag` or
`dnx Pkg@1.2.3`.

The inverse of `sync.launch.argv`, which builds those commands from a `packages[]` entry; this
one also reads the forms people write by hand (no `-y`, `@latest`, `cmd /c` on Windows, extra
docker options), since the doctor must recognise a server however it was configured. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath, PureWindowsPath
from typing import Any

__all__ = ["Invocation", "identify", "image_repository", "package_key", "served_key"]

# Docker `run` options that take the next argument as their value (when not written `--x=v`).
_DOCKER_VALUED = frozenset(
    {
        *("-e", "--env", "--env-file", "-v", "--volume", "--mount", "-p", "--publish"),
        *("--name", "--network", "--net", "-w", "--workdir", "-u", "--user", "--entrypoint"),
        *("--platform", "-l", "--label", "--label-file", "--add-host", "--pull", "--cpus"),
        *("-m", "--memory", "--hostname", "-h", "--cap-add", "--cap-drop", "--device"),
        *("--dns", "--security-opt", "--tmpfs", "--ulimit", "--log-driver", "--log-opt"),
        *("--restart", "--runtime", "--shm-size", "--stop-signal", "--ipc", "--pid"),
        *("--userns", "--uts", "--gpus", "--cidfile", "--group-add"),
    }
)
# npx / uvx options that take a value; their value is never the package.
_NPX_VALUED = frozenset({"-p", "--package", "-c", "--call", "--registry", "--cache"})
_UVX_VALUED = frozenset(
    {"--with", "--python", "-p", "--index", "--index-url", "--extra-index-url", "--with-editable"}
)
_PEP508_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)$")


@dataclass(frozen=True, slots=True)
class Invocation:
    registry_type: str  # npm | pypi | oci | nuget
    identifier: str  # as the registry names it (an OCI image without tag or digest)
    version: str  # the pinned version ("" when unpinned, or pinned to a moving tag)


def _program(command: str) -> str:
    # `/usr/local/bin/npx`, `C:\Program Files\nodejs\npx.cmd` and `npx` are one launcher.
    name = PureWindowsPath(command).name if "\\" in command else PurePath(command).name
    name = name.lower()
    for suffix in (".cmd", ".exe", ".bat", ".ps1"):
        name = name.removesuffix(suffix)
    return name


def _operands(args: Sequence[str], valued: frozenset[str]) -> list[str]:
    """The arguments that are not options nor an option's value, in order."""
    found: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--":
            return found + list(args[i + 1 :])
        elif arg.startswith("-"):
            skip = arg in valued
        else:
            found.append(arg)
    return found


def _first_operand(args: Sequence[str], valued: frozenset[str]) -> tuple[int, str] | None:
    found = _operands(args, valued)
    return (0, found[0]) if found else None


def _package_operand(
    args: Sequence[str], valued: frozenset[str], pinned: Callable[[str], bool]
) -> str | None:
    """The operand naming the package: the first one pinned to a version, else the first.
    Publishers put words such as `serve` in `runtimeArguments`, which launchers then place
    before the package (`uvx serve pkg==1.2`); the pin tells the package apart."""
    found = _operands(args, valued)
    return next((a for a in found if pinned(a)), found[0] if found else None)


def _moving(version: str) -> str:
    # `@latest`, `:latest` and dist-tags pin nothing a registry version could be.
    return "" if version in {"latest", "next", "stable"} else version


def _npm_pinned(spec: str) -> bool:
    at = spec.find("@", 1)
    return at > 0 and _moving(spec[at + 1 :]) != ""


def _npm(args: Sequence[str]) -> Invocation | None:
    spec = _package_operand(args, _NPX_VALUED, _npm_pinned)
    if spec is None:
        return None
    at = spec.find("@", 1)  # a scope's leading `@` is part of the name
    if at < 0:
        return Invocation("npm", spec, "")
    return Invocation("npm", spec[:at], _moving(spec[at + 1 :]))


def _pypi(args: Sequence[str]) -> Invocation | None:
    args = list(args)
    spec = ""
    for i, arg in enumerate(args):
        # `uvx --from pkg==1.2 command`: the package is the --from value.
        if arg == "--from" and i + 1 < len(args):
            spec = args[i + 1]
        elif arg.startswith("--from="):
            spec = arg.removeprefix("--from=")
    if not spec:
        operand = _package_operand(
            args, _UVX_VALUED | {"--from"}, lambda a: bool(_PEP508_PIN.match(a))
        )
        if operand is None:
            return None
        spec = operand
    pinned = _PEP508_PIN.match(spec)
    if pinned:
        return Invocation("pypi", pinned.group(1), pinned.group(2))
    name, _, version = spec.partition("@")  # uvx's own `pkg@1.2.3`
    return Invocation("pypi", name, _moving(version))


def image_repository(reference: str) -> tuple[str, str]:
    """An image reference split into its repository and its tag or digest
    (`ghcr.io/a/b:1.2` → `ghcr.io/a/b`, `1.2`); a registry port is not a tag."""
    if "@" in reference:
        repository, _, digest = reference.partition("@")
        return repository, digest
    head, slash, last = reference.rpartition("/")
    if ":" in last:
        name, _, tag = last.partition(":")
        return f"{head}{slash}{name}", tag
    return reference, ""


def _oci(args: Sequence[str]) -> Invocation | None:
    if not args or args[0] != "run":
        return None
    image = _package_operand(args[1:], _DOCKER_VALUED, lambda a: bool(image_repository(a)[1]))
    if image is None:
        return None
    repository, tag = image_repository(image)
    return Invocation("oci", repository, _moving(tag))


def _nuget(args: Sequence[str]) -> Invocation | None:
    found = _first_operand(args, frozenset({"--source", "--version"}))
    if found is None:
        return None
    name, _, version = found[1].partition("@")
    for i, arg in enumerate(args):
        if arg == "--version" and i + 1 < len(args):
            version = args[i + 1]
    return Invocation("nuget", name, version)


def identify(command: str, args: Sequence[str]) -> Invocation | None:
    """The package `command args` runs, or None when it runs no registry package (a script,
    a binary, a launcher this code does not know)."""
    program = _program(command)
    args = list(args)
    # Windows wraps launchers: `cmd /c npx ...` (as in GitHub's own allowlist example).
    if program == "cmd" and args[:1] and args[0].lower() in {"/c", "/k"}:
        return identify(args[1], args[2:]) if len(args) > 1 else None
    if program in {"npx", "bunx"}:
        return _npm(args)
    if program in {"npm", "pnpm", "yarn"} and args[:1] and args[0] in {"exec", "dlx", "x"}:
        return _npm(args[1:])
    if program == "uvx" or (program == "pipx" and args[:1] == ["run"]):
        return _pypi(args[1:] if program == "pipx" else args)
    if program == "uv" and args[:2] == ["tool", "run"]:
        return _pypi(args[2:])
    if program in {"docker", "podman"}:
        return _oci(args)
    if program == "dnx" or (program == "dotnet" and args[:2] == ["tool", "exec"]):
        return _nuget(args[2:] if program == "dotnet" else args)
    return None


def package_key(registry_type: str, identifier: str) -> tuple[str, str]:
    """What makes two packages the same, as each registry compares names: (type, name)."""
    kind = registry_type.lower()
    ident = identifier.strip()
    if kind == "pypi":  # PEP 503 names: case and runs of -_. do not matter
        ident = re.sub(r"[-_.]+", "-", ident)
    if kind == "oci":
        # Docker Hub is the default registry: `docker.io/x/y`, `index.docker.io/x/y` and
        # `x/y` are one image, as `library/nginx` and `nginx` are.
        ident = image_repository(ident)[0].lower()
        for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
            ident = ident.removeprefix(prefix)
        ident = ident.removeprefix("library/")
    return kind, ident.lower()


def served_key(package: Mapping[str, Any]) -> tuple[str, str] | None:
    """`package_key` of a served `packages[]` entry (None when it names no identifier)."""
    kind, ident = package.get("registryType"), package.get("identifier")
    if isinstance(kind, str) and isinstance(ident, str) and ident:
        return package_key(kind, ident)
    return None
