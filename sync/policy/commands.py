"""The bodies of `subregistry policy export` and `subregistry doctor`, once the CLI has parsed
their arguments and loaded the configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

from sync.config import Config
from sync.errors import CommandFailed
from sync.policy.catalogue import groups
from sync.policy.doctor import diagnose
from sync.policy.export import Exporter, ExportOptions, ExportResult
from sync.policy.formats import claude, cline, github, kiro, static, vscode
from sync.policy.probe import probe
from sync.policy.report import Report, clean, render, to_json
from sync.policy.sinks import CheckSink, FileSink, TreeSink, UnsafePath
from sync.store import open_reader

__all__ = ["CLIENTS", "FORMATS", "doctor_command", "policy_export_command"]

# Each format's module, by its --format name.
EXPORTERS: dict[str, Exporter] = {
    "github": github.export,
    "vscode": vscode.export,
    "claude-code": claude.export,
    "cline": cline.export,
    "kiro": kiro.export,
    "static": static.export,
}
FORMATS = tuple(EXPORTERS)
CLIENTS = ("vscode", "claude-code")
TREE_FORMATS = ("static",)  # formats that write a directory, not one file
_SHOWN = 5  # paths a stale tree's line names


# The one format that points a client at a registry (VS Code's gallery service URL).
_REGISTRY_FORMATS = ("vscode",)


def _check_registry_options(fmt: str, url: str | None, *, registry_only: bool) -> None:
    """`--registry-url` and `--registry-only` mean something to VS Code's policy only; given
    to another format, or a URL a client cannot use, they are a mistake worth one line."""
    if (url is not None or registry_only) and fmt not in _REGISTRY_FORMATS:
        flag = "--registry-url" if url is not None else "--registry-only"
        raise CommandFailed(f"{flag} applies to --format vscode only, not {fmt}")
    if url is None:
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or any(c.isspace() for c in url)
    ):
        raise CommandFailed(
            f"--registry-url {url!r} is not a registry base URL such as "
            "https://registry.example.com or https://registry.example.com/teams/payments"
        )


async def policy_export_command(
    config: Config,
    fmt: str,
    *,
    view: str,
    output: Path | None,
    check: Path | None,
    include_deprecated: bool,
    registry_url: str | None,
    registry_only: bool,
) -> int:
    """Write (or `--check`) one client's file from a served view. Exit 0 when written or
    current, 1 when `--check` finds the file out of date; every failure is one line."""
    named = config.view(view)  # an unknown view fails before the store is opened
    exporter = EXPORTERS[fmt]
    _check_registry_options(fmt, registry_url, registry_only=registry_only)
    tree = fmt in TREE_FORMATS
    if tree and output is None and check is None:
        raise CommandFailed(f"--format {fmt} writes a directory: give it with --output DIR")
    if registry_url is None and config.api.public_url is not None:
        base = config.api.base_path if named is None else named.base_path
        registry_url = config.api.public_url + base
    options = ExportOptions(
        view=view,
        include_deprecated=include_deprecated,
        registry_url=registry_url,
        registry_only=registry_only,
    )
    sink: FileSink | TreeSink | CheckSink
    if check is not None:
        sink = CheckSink(check, tree=tree, owned=static.OWNED if tree else None)
    elif tree:
        assert output is not None
        sink = TreeSink(output)
    else:
        sink = FileSink(output)
    where = check or output
    reader = await open_reader(config.storage, connections=1)
    try:
        result: ExportResult = await exporter(groups(reader, view), options, sink)
    except OSError as exc:
        # The folder or file asked for, not the temporary file beside it that failed.
        raise CommandFailed(f"cannot write {where}: {exc.strerror or exc}") from None
    except UnsafePath as exc:
        raise CommandFailed(f"the {fmt} export refused the path {clean(str(exc))!r}") from None
    finally:
        await reader.close()
    if isinstance(sink, CheckSink):
        # The verdict alone: the warnings were shown when the file was written, and a CI log
        # should hold the one line that says what is out of date.
        sink.finish()
        if sink.stale:
            print(f"subregistry: {clean(_stale(check, sink.stale, tree=tree))}", file=sys.stderr)
            return 1
        return 0
    for warning in result.warnings:
        print(f"subregistry: warning: {clean(warning)}", file=sys.stderr)
    if isinstance(sink, TreeSink):
        try:
            sink.prune(static.OWNED)
        except OSError as exc:
            raise CommandFailed(f"cannot prune {where}: {exc.strerror or exc}") from None
    if output is None:
        assert isinstance(sink, FileSink)
        assert sink.data is not None
        sys.stdout.buffer.write(sink.data)
    else:
        print(f"wrote {result.servers} servers ({result.entries} entries) to {clean(str(output))}")
    return 0


def _stale(path: Path | None, stale: list[str], *, tree: bool) -> str:
    if not tree:
        why = "its content differs from the export"
        if stale[0].endswith("(missing)"):
            why = "it does not exist"
        elif stale[0].endswith("(a folder, not a file)"):
            why = "it is a folder, not a file"
        return f"{path} is out of date: {why}"
    if stale[0].endswith("(a file, not a folder)"):
        return f"{path} is out of date: it is a file, not a folder"
    shown = ", ".join(stale[:_SHOWN]) + (
        f", and {len(stale) - _SHOWN} more" if len(stale) > _SHOWN else ""
    )
    count = "1 file differs" if len(stale) == 1 else f"{len(stale)} files differ"
    return f"{path} is out of date: {count}: {shown}"


async def doctor_command(
    config: Config,
    *,
    mcp_json: Path | None,
    client: str | None,
    view: str,
    url: str | None,
    as_json: bool,
    request_timeout: float,
) -> int:
    """Exit 0 when every configured server would be allowed (or every probe passed), 1
    otherwise."""
    report: Report
    if url is not None:
        report = await probe(url, request_timeout=request_timeout)
    else:
        assert mcp_json is not None
        config.view(view)  # an unknown view fails before the store is opened
        reader = await open_reader(config.storage, connections=1)
        try:
            report = await diagnose(config, reader, mcp_json, client=client, view=view)
        finally:
            await reader.close()
    if as_json:
        sys.stdout.write(json.dumps(to_json(report), indent=2, ensure_ascii=True) + "\n")
    else:
        sys.stdout.write(render(report))
    return 0 if report.ok else 1
