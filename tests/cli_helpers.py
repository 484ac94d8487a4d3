"""Running `subregistry` as a real process in tests."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

TOKEN = "s3cret-token-value"


def write_config(
    tmp_path: Path, url: str, extra: str = "", *, before_upstreams: bool = False
) -> Path:
    """A TOML config for a real process; `extra` goes after the upstream, or before it."""
    head = f'[storage]\npath = "{tmp_path / "mirror.db"}"\n[logging]\nformat = "json"\n'
    upstream = (
        f'[[upstreams]]\nname = "official"\nurl = "{url}"\npage_delay = 0\nretries = 1\n'
        f'headers = {{ Authorization = "Bearer {TOKEN}" }}\n'
    )
    path = tmp_path / "subregistry.toml"
    text = head + extra + upstream if before_upstreams else head + upstream + extra
    path.write_text(text)
    return path


async def run(*args: str | Path) -> tuple[int, str, str]:
    process = await spawn(*args)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def spawn(
    *args: str | Path, quiet: bool = False, stdout: int | None = None, stderr: int | None = None
) -> asyncio.subprocess.Process:
    """`python -m sync ARGS` as a child process, its output piped (or discarded, or sent to
    the descriptors given: a pipe's end, a pty)."""
    stream = asyncio.subprocess.DEVNULL if quiet else asyncio.subprocess.PIPE
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sync",
        *map(str, args),
        stdout=stream if stdout is None else stdout,
        stderr=stream if stderr is None else stderr,
    )
