"""Where an export's bytes go: a file, a directory tree, or a comparison with what is on disk
(`--check`), through one interface, so every format is written and checked the same way.

A format writes each file whole, once, by a relative path; a single-file format writes the
path "". A file too large to hold (the `static` list of every version) is streamed instead
(`Sink.stream`). Paths come from served names and versions, which are upstream text: a path
with an empty, `.` or `..` segment, a backslash or a NUL is refused, so no entry can write
outside the output.

Inside a tree's root nothing follows a symbolic link: each folder is opened relative to its
parent with `O_NOFOLLOW`, and every create, rename, walk and unlink is made through that
folder's descriptor (`dir_fd`), so a link planted in the output (a folder, or the format's own
`v0.1`) is never written, walked or emptied through; a link where the export must write is
refused (`LinkedPath`) before anything is written there. The root itself is the caller's path
and is taken as given.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import IO, Protocol

__all__ = [
    "CheckSink",
    "FileSink",
    "LinkedPath",
    "Sink",
    "TreeSink",
    "UnsafePath",
    "is_temporary",
    "safe_parts",
]

_CHUNK = 1 << 16
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# The only name a sink writes that an export does not: a file being written, renamed over its
# target once whole. Fixed length (a 255-byte target name must not make it too long), and a
# name no format exports (`static` refuses it), so pruning and `--check` may skip it alone.
_TEMPORARY = re.compile(r"\.subregistry-[0-9a-f]{16}\.tmp")


class UnsafePath(ValueError):
    """A relative path an export must not write (it would leave the output, or is ambiguous)."""


class LinkedPath(OSError):
    """A symbolic link inside the output where the export must write or walk: refused, never
    followed (an `OSError`, so the command reports it as a path it cannot write)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            errno.ELOOP, f"{path} is a symbolic link, which the export never writes through"
        )
        self.path = path


def safe_parts(path: str) -> tuple[str, ...]:
    """The segments of a relative export path, refusing any that could escape the output."""
    if "\\" in path or "\x00" in path or path.startswith("/"):
        raise UnsafePath(path)
    parts = tuple(path.split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(path)
    return parts


def is_temporary(name: str) -> bool:
    """Whether `name` is a sink's own file in progress (never exported, never pruned)."""
    return _TEMPORARY.fullmatch(name) is not None


class Sink(Protocol):
    def write(self, path: str, data: bytes) -> None:
        """Write the file `path` ("" for a single-file export) whole."""

    def stream(self, path: str) -> AbstractContextManager[IO[bytes]]:
        """The file `path`, written through the stream the block is given and committed whole
        when the block ends without error."""


def _is_link(folder: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _open_child(folder: int, name: str, shown: str, *, create: bool) -> int:
    """The folder `name` inside `folder`, made when `create` and absent; a link is refused."""
    try:
        return os.open(name, _DIR, dir_fd=folder)
    except FileNotFoundError:
        if not create:
            raise
        os.mkdir(name, 0o777, dir_fd=folder)
        return os.open(name, _DIR, dir_fd=folder)
    except OSError as exc:
        # O_NOFOLLOW answers ELOOP for a link (Linux, macOS); ENOTDIR may come first for a link
        # to a file under O_DIRECTORY, so look.
        if exc.errno == errno.ELOOP or _is_link(folder, name):
            raise LinkedPath(shown) from None
        raise


@contextmanager
def _atomic(folder: int, name: str, shown: str, *, look: bool = True) -> Iterator[IO[bytes]]:
    # A reader (a web server, a client loading its policy) never sees half a file: the bytes
    # go to a temporary file beside the target, renamed over it once complete. Created with
    # 0666 less the umask, as any file this user writes, so a web server running as another
    # user reads it.
    # The rename would replace a link, never write through it; looking first (skipped in a
    # folder this export made) is what lets the export name it instead.
    if look and _is_link(folder, name):
        raise LinkedPath(shown)
    tmp = f".subregistry-{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, _NEW, 0o666, dir_fd=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
        raise


class FileSink:
    """One output file (or standard output when `target` is None, buffered by the caller)."""

    def __init__(self, target: Path | None) -> None:
        self.target = target
        self.data: bytes | None = None

    def write(self, path: str, data: bytes) -> None:
        if path != "":
            raise UnsafePath(f"a single-file format wrote {path!r}")
        if self.target is None:
            self.data = data
            return
        with self.stream(path) as out:
            out.write(data)

    @contextmanager
    def stream(self, path: str) -> Iterator[IO[bytes]]:
        if path != "":
            raise UnsafePath(f"a single-file format wrote {path!r}")
        if self.target is None:
            buffer = io.BytesIO()
            yield buffer
            self.data = buffer.getvalue()
            return
        # The file's own folder is the caller's path, links and all.
        self.target.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(self.target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with _atomic(folder, self.target.name, str(self.target)) as out:
                yield out
        finally:
            os.close(folder)


class _Folders:
    """Descriptors of folders under a root, each opened from its parent without following a
    link. The chain to the last folder is kept open: a format writes one folder's files
    together, then a sibling's, so only the segments that differ are opened again."""

    def __init__(self, root: Path, *, create: bool) -> None:
        self.root, self.create = root, create
        self.parts: tuple[str, ...] = ()
        self.fds: list[int] = []  # fds[i]: the folder `parts[:i]`, fds[0] the root
        self.made: list[bool] = []  # made[i]: fds[i] was created by this sink, so holds no link

    @property
    def fresh(self) -> bool:
        """Whether the last folder opened was made by this sink (nothing else is in it)."""
        return bool(self.made) and self.made[-1]

    def open(self, parts: tuple[str, ...]) -> int:
        if self.fds and parts == self.parts:
            return self.fds[-1]
        if not self.fds:
            if self.create:
                self.root.mkdir(parents=True, exist_ok=True)
            self.fds.append(os.open(self.root, os.O_RDONLY | os.O_DIRECTORY))
            self.made.append(False)
        common = 0
        while common < min(len(parts), len(self.parts)) and parts[common] == self.parts[common]:
            common += 1
        while len(self.fds) > common + 1:
            os.close(self.fds.pop())
            self.made.pop()
        self.parts = parts[:common]
        for i in range(common, len(parts)):
            at = parts[: i + 1]
            # A child of a folder this sink made is new: no need to look before making it.
            made = self.create and (self.made[-1] or not _exists(self.fds[-1], parts[i]))
            if made:
                os.mkdir(parts[i], 0o777, dir_fd=self.fds[-1])
            self.fds.append(_open_child(self.fds[-1], parts[i], "/".join(at), create=False))
            self.made.append(made)
            self.parts = at
        return self.fds[-1]

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())
        self.made.clear()
        self.parts = ()


def _exists(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _walk(folder: int, at: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """The path parts of every file under `folder` but the sinks' own
    temporary files, in name order; a link is a file here, never descended into."""
    with os.scandir(folder) as entries:
        found = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
    for name, is_dir in found:
        if is_dir:
            child = _open_child(folder, name, "/".join((*at, name)), create=False)
            try:
                yield from _walk(child, (*at, name))
            finally:
                os.close(child)
        elif not is_temporary(name):
            yield (*at, name)


class TreeSink:
    """A directory of files: the `static` format's tree. `prune` then removes what an earlier
    export left under the format's own folder and this one did not write."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: set[tuple[str, ...]] = set()
        self.folders = _Folders(root, create=True)

    def write(self, path: str, data: bytes) -> None:
        parts = safe_parts(path)
        folder = self.folders.open(parts[:-1])
        with _atomic(folder, parts[-1], path, look=not self.folders.fresh) as out:
            out.write(data)
        self.written.add(parts)

    @contextmanager
    def stream(self, path: str) -> Iterator[IO[bytes]]:
        parts = safe_parts(path)
        # Its own descriptor: other files are written (other folders opened) while it is open.
        folder = os.dup(self.folders.open(parts[:-1]))
        try:
            with _atomic(folder, parts[-1], path) as out:
                yield out
        finally:
            os.close(folder)
        self.written.add(parts)

    def prune(self, owned: str) -> int:
        """Remove every file under `owned` (a relative folder) that this export did not write,
        then the folders left empty; the rest of the directory (a site's own pages) is never
        touched, and a link is removed as a file, never followed. Returns the number of files
        removed."""
        self.folders.close()
        base = safe_parts(owned)
        folders = _Folders(self.root, create=False)
        try:
            return _prune(folders.open(base), base, self.written)
        finally:
            folders.close()


def _prune(folder: int, at: tuple[str, ...], keep: set[tuple[str, ...]]) -> int:
    removed = 0
    with os.scandir(folder) as entries:
        found = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
    for name, is_dir in found:
        if is_dir:
            child = _open_child(folder, name, "/".join((*at, name)), create=False)
            try:
                removed += _prune(child, (*at, name), keep)
                empty = not os.listdir(child)
            finally:
                os.close(child)
            if empty:
                os.rmdir(name, dir_fd=folder)
        elif (*at, name) not in keep and not is_temporary(name):
            os.unlink(name, dir_fd=folder)
            removed += 1
    return removed


class CheckSink:
    """Compares what an export would write with what is on disk, writing nothing: `stale`
    lists the paths that differ ("changed"), are missing, are links (never followed), or (after
    `finish`) are on disk under the format's own folder but would not be written ("not in the
    export"). A tree whose root is a file is one entry: "(a file, not a folder)"."""

    def __init__(self, target: Path, *, tree: bool, owned: str | None = None) -> None:
        self.target = target
        self.tree = tree
        self.owned = owned
        self.seen: set[tuple[str, ...]] = set()
        self.stale: list[str] = []
        self.folders = _Folders(target, create=False)
        self.root_is_file = tree and target.exists() and not target.is_dir()

    def write(self, path: str, data: bytes) -> None:
        self.compare(path, io.BytesIO(data))

    @contextmanager
    def stream(self, path: str) -> Iterator[IO[bytes]]:
        with tempfile.TemporaryFile() as spool:
            yield spool
            spool.seek(0)
            self.compare(path, spool)

    def _open(self, path: str) -> tuple[str, int]:
        """(the name `stale` gives the file, its descriptor for reading)."""
        if not self.tree:
            if path != "":
                raise UnsafePath(f"a single-file format wrote {path!r}")
            return str(self.target), os.open(self.target, os.O_RDONLY)
        parts = safe_parts(path)
        self.seen.add(parts)
        folder = self.folders.open(parts[:-1])
        try:
            return path, os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LinkedPath(path) from None
            raise

    def compare(self, path: str, source: IO[bytes]) -> None:
        if self.root_is_file:
            return  # `finish` says the one thing that matters
        name = str(self.target) if not self.tree else path
        try:
            name, fd = self._open(path)
            with os.fdopen(fd, "rb") as disk:
                while True:
                    want, have = source.read(_CHUNK), disk.read(_CHUNK)
                    if want != have:
                        self.stale.append(f"{name} (changed)")
                        return
                    if not want:
                        return
        except LinkedPath as exc:
            self.stale.append(f"{exc.path} (a symbolic link)")
        except (FileNotFoundError, NotADirectoryError):
            self.stale.append(f"{name} (missing)")
        except IsADirectoryError:
            self.stale.append(f"{name} (a folder, not a file)")

    def finish(self) -> None:
        self.folders.close()
        if self.root_is_file:
            self.stale = [f"{self.target} (a file, not a folder)"]
            return
        if not self.tree or not self.target.exists():
            return
        base = safe_parts(self.owned) if self.owned else ()
        folders = _Folders(self.target, create=False)
        try:
            walk = _walk(folders.open(base), base)
            for parts in walk:
                if parts not in self.seen:
                    self.stale.append(f"{'/'.join(parts)} (not in the export)")
        except FileNotFoundError:
            pass  # the owned folder is missing: its files are already listed as such
        except LinkedPath as exc:
            self.stale.append(f"{exc.path} (a symbolic link)")
        finally:
            folders.close()
