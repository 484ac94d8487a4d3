"""The control channel: how `subregistry sync` and `reapply` act through a running daemon.

The daemon that holds the writer lock serves a small HTTP API on a Unix socket beside the
database (`<storage.path>.sock`, mode 0600: only its own user, and root, can connect). A
command that finds the store locked asks it instead: the daemon runs the pass now (after any
pass of that upstream already running), waits for it, and answers with the same summary lines
the command prints in direct mode, so the operator sees the same output and exit code either
way. Nothing else is reachable there: no reads, no configuration, no shutdown.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from sync.errors import ConfigError
from sync.pull.engine import Engine

__all__ = ["ControlUnavailable", "ask", "control_site", "socket_path"]

log = structlog.get_logger("sync.control")
ENGINE = web.AppKey("control_engine", Engine)
# sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
_MAX_PATH = 107


class ControlUnavailable(Exception):
    """No daemon answers on the control socket."""


def socket_path(database: Path) -> Path:
    """Beside the database, absolute: `cwd` may differ between the daemon and a command."""
    return Path(os.path.abspath(f"{database}.sock"))


async def _sync(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("upstream"), str | None):
        return web.json_response({"error": "expected {upstream: name | null, full}"}, status=400)
    only, full = body.get("upstream"), bool(body.get("full"))
    try:
        upstreams = [engine.config.upstream(only)] if only else engine.config.upstreams
    except ConfigError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    results = []
    for name in [u.name for u in upstreams]:
        result = await engine.run(name, full=full, ignore_circuit=True, wait=True)
        results.append({"upstream": name, "outcome": result.outcome, "summary": result.summary()})
    return web.json_response({"results": results})


async def _reapply(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    names, changed = await engine.curator.reapply()
    return web.json_response({"names": names, "changed": changed})


@contextlib.asynccontextmanager
async def control_site(engine: Engine, database: Path) -> AsyncIterator[Path | None]:
    """Serve the control API while the block runs; yields the socket path, or None when the
    path is too long for a Unix socket (the daemon then runs without one, and says so)."""
    path = socket_path(database)
    if len(os.fsencode(path)) > _MAX_PATH:
        log.warning("control.unavailable", reason="socket path too long", path=str(path))
        yield None
        return
    # Only the lock holder gets here: a socket file left by a killed daemon is stale.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    app = web.Application()
    app[ENGINE] = engine
    app.router.add_post("/sync", _sync)
    app.router.add_post("/reapply", _reapply)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # Created 0600 (umask), not chmod-ed after: no moment in which another user could
    # connect and keep the connection.
    mask = os.umask(0o177)
    try:
        site = web.UnixSite(runner, str(path))
        try:
            await site.start()
        finally:
            os.umask(mask)
        log.info("control.listening", socket=str(path))
        yield path
    finally:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def ask(database: Path, action: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` to the daemon's `/action`; wait as long as the daemon works on it."""
    path = socket_path(database)
    if not path.exists():
        raise ControlUnavailable(f"no control socket at {path}")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    connector = aiohttp.UnixConnector(path=str(path))
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.post(f"http://subregistry/{action}", json=body) as response,
        ):
            reply: dict[str, Any] = await response.json()
            if response.status != 200:
                raise ConfigError(str(reply.get("error", f"HTTP {response.status}")))
            return reply
    except aiohttp.ClientError as exc:
        raise ControlUnavailable(f"the daemon on {path} did not answer: {exc}") from None
