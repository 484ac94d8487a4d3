"""Where an export's bytes go: a file, a directory tree, or a comparison with what is on disk
(`--check`), through one interface, so every format is written and checked the same way.

A format writes each file whole, once, by a relative path; a single-file format writes the
path "". A file too large to hold (the `static` list of every version) is streamed instead
(`Sink.stream`). Paths come from served names and versions, which are upstream text: a path
with an empty, `.` or `..` segment, a backslash or a NUL is refused, so no entry can write
outside the output.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

__all__ = ["CheckSink", "FileSink", "Sink", "TreeSink", "UnsafePath", "safe_parts"]

_CHUNK = 1 << 16


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

    def stream(self, path: str) -> AbstractContextManager[IO[bytes]]:
        """The file `path`, written through the stream the block is given and committed whole
        when the block ends without error."""


@contextmanager
def _atomic(target: Path) -> Iterator[IO[bytes]]:
    # A reader (a web server, a client loading its policy) never sees half a file: the bytes
    # go to a temporary file beside the target, renamed over it once complete.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        # mkstemp makes the file private (0600); a web server or a client running as another
        # user must read it, as it would any file this user creates.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    # Reading the umask means setting it: put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(target: Path, data: bytes) -> None:
    with _atomic(target) as out:
        out.write(data)


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

    @contextmanager
    def stream(self, path: str) -> Iterator[IO[bytes]]:
        buffer = io.BytesIO()
        yield buffer
        self.write(path, buffer.getvalue())


def _owned_files(root: Path, owned: str | None) -> Iterator[tuple[tuple[str, ...], Path]]:
    """Every file under `root/owned` (all of `root` for None) with its path relative to
    `root`; symbolic links to directories are not followed (a link is a file here: removing it
    removes the link, never what it points to)."""
    base = root.joinpath(*safe_parts(owned)) if owned else root
    for folder, dirs, files in os.walk(base):
        here = Path(folder)
        links = [d for d in dirs if (here / d).is_symlink()]
        for name in sorted(files + links):
            file = here / name
            yield PurePosixPath(file.relative_to(root).as_posix()).parts, file


class TreeSink:
    """A directory of files: the `static` format's tree. `prune` then removes what an earlier
    export left under the format's own folder and this one did not write."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: set[tuple[str, ...]] = set()

    def write(self, path: str, data: bytes) -> None:
        parts = safe_parts(path)
        _atomic_write(self.root.joinpath(*parts), data)
        self.written.add(parts)

    @contextmanager
    def stream(self, path: str) -> Iterator[IO[bytes]]:
        parts = safe_parts(path)
        with _atomic(self.root.joinpath(*parts)) as out:
            yield out
        self.written.add(parts)

    def prune(self, owned: str) -> int:
        """Remove every file under `owned` (a relative folder) that this export did not write,
        then the folders left empty; the rest of the directory (a site's own pages) is never
        touched. Returns the number of files removed."""
        removed = 0
        for parts, file in list(_owned_files(self.root, owned)):
            if parts not in self.written:
                file.unlink()
                removed += 1
        base = self.root.joinpath(*safe_parts(owned))
        for folder, _, _ in sorted(os.walk(base), key=lambda w: len(w[0]), reverse=True):
            if not os.listdir(folder) and Path(folder) != base:
                os.rmdir(folder)
        return removed


class CheckSink:
    """Compares what an export would write with what is on disk, writing nothing: `stale`
    lists the paths that differ ("changed"), are missing, or (after `finish`) are on disk under
    the format's own folder but would not be written ("not in the export")."""

    def __init__(self, target: Path, *, tree: bool, owned: str | None = None) -> None:
        self.target = target
        self.tree = tree
        self.owned = owned
        self.seen: set[tuple[str, ...]] = set()
        self.stale: list[str] = []

    def _file(self, path: str) -> tuple[str, Path]:
        if not self.tree:
            if path != "":
                raise UnsafePath(f"a single-file format wrote {path!r}")
            return str(self.target), self.target
        parts = safe_parts(path)
        self.seen.add(parts)
        return path, self.target.joinpath(*parts)

    def write(self, path: str, data: bytes) -> None:
        self.compare(path, io.BytesIO(data))

    @contextmanager
    def stream(self, path: str) -> Iterator[IO[bytes]]:
        with tempfile.TemporaryFile() as spool:
            yield spool
            spool.seek(0)
            self.compare(path, spool)

    def compare(self, path: str, source: IO[bytes]) -> None:
        name, file = self._file(path)
        try:
            with file.open("rb") as disk:
                while True:
                    want, have = source.read(_CHUNK), disk.read(_CHUNK)
                    if want != have:
                        self.stale.append(f"{name} (changed)")
                        return
                    if not want:
                        return
        except (FileNotFoundError, NotADirectoryError):
            self.stale.append(f"{name} (missing)")
        except IsADirectoryError:
            self.stale.append(f"{name} (a folder, not a file)")

    def finish(self) -> None:
        if not self.tree or not self.target.is_dir():
            return
        for parts, _ in _owned_files(self.target, self.owned):
            if parts not in self.seen and not parts[-1].startswith("."):
                self.stale.append(f"{'/'.join(parts)} (not in the export)")
