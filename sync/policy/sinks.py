"""Where an export's bytes go: a file, a directory tree, or a comparison with what is on disk
(`--check`), through one interface, so every format is written and checked the same way.

A format writes each file whole, once, by a relative path; a single-file format writes the
path "". Paths come from served names and versions, which are upstream text: a path with an
empty, `.` or `..` segment, a backslash or a NUL is refused, so no entry can write outside the
output.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol

__all__ = ["CheckSink", "FileSink", "Sink", "TreeSink", "UnsafePath", "safe_parts"]


class UnsafePath(ValueError):
    """A relative path an export must not write (it would leave the output, or is ambiguous)."""


def safe_parts(path: str) -> tuple[str, ...]:
    """The segments of a relative export path, refusing any that could escape the output."""
    if "\\" in path or "\x00" in path or path.startswith("/"):
        raise UnsafePath(path)
    parts = tuple(path.split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(path)
    return parts


class Sink(Protocol):
    def write(self, path: str, data: bytes) -> None:
        """Write the file `path` ("" for a single-file export) whole."""


def _atomic_write(target: Path, data: bytes) -> None:
    # A reader (a web server, a client loading its policy) never sees half a file.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FileSink:
    """One output file (or standard output when `target` is None, buffered by the caller)."""

    def __init__(self, target: Path | None) -> None:
        self.target = target
        self.data: bytes | None = None

    def write(self, path: str, data: bytes) -> None:
        if path != "":
            raise UnsafePath(f"a single-file format wrote {path!r}")
        self.data = data
        if self.target is not None:
            _atomic_write(self.target, data)


class TreeSink:
    """A directory of files: the `static` format's tree."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: set[tuple[str, ...]] = set()

    def write(self, path: str, data: bytes) -> None:
        parts = safe_parts(path)
        self.written.add(parts)
        _atomic_write(self.root.joinpath(*parts), data)


class CheckSink:
    """Compares what an export would write with what is on disk, writing nothing: `stale`
    lists the paths that differ, are missing, or (after `finish`) are on disk but would not be
    written."""

    def __init__(self, target: Path, *, tree: bool) -> None:
        self.target = target
        self.tree = tree
        self.seen: set[tuple[str, ...]] = set()
        self.stale: list[str] = []

    def _read(self, file: Path) -> bytes | None:
        try:
            return file.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def write(self, path: str, data: bytes) -> None:
        if not self.tree:
            if self._read(self.target) != data:
                self.stale.append(str(self.target))
            return
        parts = safe_parts(path)
        self.seen.add(parts)
        if self._read(self.target.joinpath(*parts)) != data:
            self.stale.append(path)

    def finish(self) -> None:
        if not self.tree or not self.target.is_dir():
            return
        for file in sorted(self.target.rglob("*")):
            if file.is_file():
                rel = PurePosixPath(file.relative_to(self.target).as_posix())
                if rel.parts not in self.seen and not rel.name.startswith("."):
                    self.stale.append(f"{rel} (not in the export)")
