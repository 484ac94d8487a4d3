"""The `subregistry` command: argparse, then asyncio.run of a `sync/commands.py` coroutine.
Nothing imports this module.

Every command fails the same way: one `subregistry: …` line on stderr and a non-zero exit,
whatever broke (the configuration, the store, the filesystem, the output), and it never hangs:
every store it opens is closed on every path, and a connection thread left behind by a bug
cannot keep the process alive after its result is decided.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar, cast

from sync import __version__
from sync.commands import (
    STDERR,
    copy_command,
    explain_command,
    export_command,
    reapply_command,
    serve_command,
    status_command,
    sync_command,
)
from sync.config import DEFAULT_VIEW, Config, load_config
from sync.errors import CommandFailed, ConfigError, StoreError
from sync.logs import configure_logging
from sync.policy.commands import CLIENTS, FORMATS, doctor_command, policy_export_command
from sync.pull.checks import check

__all__ = ["main"]

T = TypeVar("T")


_VIEW_HELP = f"a [[views]] name (default: {DEFAULT_VIEW!r}, the view at [api] base_path)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subregistry", description="A curated mirror of the MCP Registry."
    )
    parser.add_argument("--config", type=Path, help="TOML file (default: $SUBREGISTRY_CONFIG)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser("sync", help="run one pass of each upstream, then exit")
    sync.add_argument("--full", action="store_true", help="list everything and reconcile")
    sync.add_argument("--upstream", metavar="NAME", help="only this upstream")
    status = commands.add_parser("status", help="checkpoints, passes, errors, quarantine")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    serve = commands.add_parser("serve", help="run the API and the scheduled passes")
    serve.add_argument(
        "--no-sync", action="store_true", help="serve only (an API replica of a synced file)"
    )
    commands.add_parser("reapply", help="re-evaluate every stored entry under the current rules")
    explain = commands.add_parser("explain", help="why a server is (or is not) served")
    explain.add_argument("name")
    explain.add_argument("version", nargs="?")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.add_argument("--view", default=DEFAULT_VIEW, help=_VIEW_HELP)
    export = commands.add_parser("export", help="write the served catalogue as a list envelope")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    export.add_argument("--view", default=DEFAULT_VIEW, help=_VIEW_HELP)
    check = commands.add_parser("check", help="validate the configuration; never opens the store")
    # Here too, as operators type it after the command; SUPPRESS keeps a --config given first.
    check.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    check.add_argument("--online", action="store_true", help="also read each upstream once")
    copy = commands.add_parser(
        "copy", help="copy the SQLite mirror into an empty PostgreSQL database, then exit"
    )
    copy.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host/db")
    _policy_parsers(commands)
    return parser


def _policy_parsers(commands: Any) -> None:
    policy = commands.add_parser("policy", help="turn the served catalogue into client policy")
    verbs = policy.add_subparsers(dest="verb", required=True)
    export = verbs.add_parser("export", help="write one client's allowlist or catalogue file")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--view", default=DEFAULT_VIEW, help=_VIEW_HELP)
    where = export.add_mutually_exclusive_group()
    where.add_argument(
        "--output", type=Path, help="file (directory for static) to write; default stdout"
    )
    where.add_argument(
        "--check", type=Path, metavar="FILE", help="exit 1 if FILE is not what would be written"
    )
    export.add_argument(
        "--include-deprecated", action="store_true", help="admit deprecated versions too"
    )
    export.add_argument("--registry-url", metavar="URL", help="where clients reach this view's API")
    export.add_argument(
        "--registry-only", action="store_true", help="vscode: allow registry servers only"
    )
    doctor = commands.add_parser("doctor", help="why a client would block a server")
    target = doctor.add_mutually_exclusive_group(required=True)
    target.add_argument("--mcp-json", type=Path, metavar="FILE", help="a client's MCP config")
    target.add_argument("--url", metavar="BASE", help="probe a registry as VS Code would")
    doctor.add_argument("--client", choices=CLIENTS, help="whose format FILE is (default: guess)")
    doctor.add_argument("--view", default=DEFAULT_VIEW, help=_VIEW_HELP)
    doctor.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per probe request (at most 300)"
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")


# A closed connection's thread ends within milliseconds; only a leaked one outlives this.
_SETTLE_SECONDS = 2.0
_SIGPIPE_EXIT = 128 + 13  # what a shell reports for a filter killed by SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    before = _threads()
    code = _command(args)
    if _threads() - before:
        # A store connection left open (a bug) would keep the interpreter waiting for its
        # thread forever; the command's outcome is already decided and reported.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _command(args: argparse.Namespace) -> int:
    path: Path | None = None
    try:
        config = load_config(args.config)
        configure_logging(config.logging, cast(TextIO, STDERR))
        path = config.storage.path
        code = _dispatch(args, config)
        # A reader that closed our pipe shows here, not in the interpreter's last flush.
        sys.stdout.flush()
        return code
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except BrokenPipeError:
        # Python's advice: point stdout at devnull so that the final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _SIGPIPE_EXIT
    except (StoreError, CommandFailed) as exc:
        return _fail(str(exc))
    except sqlite3.Error as exc:
        # SQLite may quote a whole damaged row: the line stays a line.
        text = str(exc)
        return _fail(f"{path}: {text[:300]}{'…' if len(text) > 300 else ''}")
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == "sync":
        return _run(sync_command(config, full=args.full, only=args.upstream))
    if args.command == "serve":
        return _run(serve_command(config, sync=not args.no_sync, source=args.config))
    if args.command == "status":
        return _run(status_command(config, as_json=args.json, out=sys.stdout))
    if args.command == "reapply":
        return _run(reapply_command(config))
    if args.command == "explain":
        return _run(
            explain_command(config, args.name, args.version, view=args.view, as_json=args.json)
        )
    if args.command == "export":
        return _run(export_command(config, args.output, view=args.view))
    if args.command == "check":
        return _run(check(config, online=args.online, out=sys.stdout))
    if args.command == "copy":
        return _run(copy_command(config, args.to))
    if args.command == "policy":
        return _run(
            policy_export_command(
                config,
                args.format,
                view=args.view,
                output=args.output,
                check=args.check,
                include_deprecated=args.include_deprecated,
                registry_url=args.registry_url,
                registry_only=args.registry_only,
            )
        )
    if args.command == "doctor":
        return _run(
            doctor_command(
                config,
                mcp_json=args.mcp_json,
                client=args.client,
                view=args.view,
                url=args.url,
                as_json=args.json,
                request_timeout=args.timeout,
            )
        )
    raise AssertionError(f"unhandled command {args.command}")


def _fail(message: str, code: int = 1) -> int:
    print(f"subregistry: {message}", file=sys.stderr)
    return code


def _threads() -> set[threading.Thread]:
    """Live threads that would keep the interpreter from exiting."""
    return {t for t in threading.enumerate() if t.is_alive() and not t.daemon}


def _run(command: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(_settled(command))


async def _settled(command: Coroutine[Any, Any, T]) -> T:
    """Run `command`, then let the store's connection threads finish on a live loop.

    aiosqlite closes a connection on its own thread and reports back to the loop, and a failed
    open closes without being awaited: were the loop gone by then, the thread would print an
    "Event loop is closed" traceback.
    """
    before = _threads()
    try:
        return await command
    finally:
        loop = asyncio.get_running_loop()
        await loop.shutdown_default_executor()
        deadline = loop.time() + _SETTLE_SECONDS
        # Threads offer nothing to await: poll them, briefly.
        while _threads() - before and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
