"""The `static` export format: the read API as plain files, for a registry that is a GitHub
Pages site, an S3 bucket or any directory a web server serves.

A file host answers a path, never a query string, and decodes `%2F` in a request into `/`
before it looks for the file. So the tree is laid out the way those hosts resolve the read
API's URLs:

- `v0.1/servers/index.html`: the list envelope of every exported version (no `nextCursor`: a
  static host ignores `cursor` and `limit`, so the one file is every page). A request for
  `/v0.1/servers?limit=1` is redirected to `/v0.1/servers/` and answered with it (python's
  http.server, nginx, GitHub Pages and S3 website endpoints all do; the mirror's own sync
  follows a same-origin redirect, `sync/pull/upstream.py`).
- `v0.1/servers/<namespace>/<server>/versions/index.html`: the versions envelope, newest
  `publishedAt` first, as `GET /v0.1/servers/{name}/versions` answers.
- `v0.1/servers/<namespace>/<server>/versions/<version>` and `.../versions/latest`: one
  `{"server", "_meta"}` each, so `GET /v0.1/servers/<ns>%2F<server>/versions/latest` (VS Code's
  lookup, `encodeURIComponent` of the name) is answered with a 200.
- `.nojekyll`: GitHub Pages builds a site with Jekyll unless this file exists, and Jekyll
  leaves out every file and folder whose name begins with `_` or `.` (a server name may:
  `[a-zA-Z0-9._-]+` after the `/`); source: https://docs.github.com/en/pages/getting-started-
  with-github-pages/about-github-pages#static-site-generators.

Entries are the stored bytes (`server` and `_meta` exactly as the API serves them). Deleted
versions never appear; deprecated ones only with `--include-deprecated`. A name or version that
cannot be a file name (see `_refusal`) is left out with a warning: no entry writes outside the
tree, and no two entries write the same file, even on a case-insensitive file system. Nothing
is written, walked or pruned through a symbolic link inside the tree (`sync/policy/sinks.py`):
a link where the tree must write fails the export, naming it.
Memory holds one server's versions; the list file is streamed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from typing import IO

from sync.policy.catalogue import ServedVersion, ServerGroup
from sync.policy.export import ExportOptions, ExportResult
from sync.policy.sinks import Sink, is_temporary

__all__ = ["OWNED", "export"]

OWNED = "v0.1"  # the folder this format owns: re-exporting prunes there, and only there
LIST = "v0.1/servers/index.html"
_INDEX = "index.html"
_LATEST = "latest"
_MAX_SEGMENT_BYTES = 255  # NAME_MAX of every common file system


def _refusal(segment: str, reserved: tuple[str, ...]) -> str | None:
    """Why `segment` cannot be one file or folder name of the tree (None: it can)."""
    if segment in ("", ".", ".."):
        return f"{segment!r} is not a file name"
    if "/" in segment or "\\" in segment:
        return "it holds a path separator"
    if not segment.isprintable():
        return "it holds a control character"
    if len(segment.encode("utf-8", "surrogatepass")) > _MAX_SEGMENT_BYTES:
        return f"it is over {_MAX_SEGMENT_BYTES} bytes long"
    if is_temporary(segment):
        return "it is the name the export gives a file in progress"
    if _fold(segment) in reserved:
        return f"{segment!r} is a name the tree itself uses"
    return None


def _fold(text: str) -> str:
    """What a case-insensitive, normalisation-insensitive file system (macOS, Windows) takes
    for the same file name."""
    return unicodedata.normalize("NFC", text).casefold()


def _item(version: ServedVersion) -> bytes:
    return f'{{"server":{version.server_text},"_meta":{version.meta_text}}}'.encode()


def _envelope(versions: list[ServedVersion]) -> bytes:
    items = b",".join(_item(v) for v in versions)
    return b'{"servers":[' + items + b'],"metadata":{"count":%d}}\n' % len(versions)


class _Tree:
    def __init__(self, options: ExportOptions, sink: Sink, out: IO[bytes]) -> None:
        self.options, self.sink, self.out = options, sink, out
        self.result = ExportResult()
        self.listed = 0
        self.folders: set[str] = set()  # exported names, folded

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)

    def folder(self, name: str) -> str | None:
        namespace, slash, server = name.partition("/")
        if not slash or "/" in server:
            self.warn(f"{name!r} is left out: a registry name has exactly one '/'.")
            return None
        why = _refusal(namespace, (_INDEX,)) or _refusal(server, ())
        if why:
            self.warn(f"{name!r} is left out: its name cannot be a path ({why}).")
            return None
        if _fold(name) in self.folders:
            self.warn(
                f"{name!r} is left out: another server's name differs from it only in case or "
                "Unicode form, and they would share files on a case-insensitive file system."
            )
            return None
        self.folders.add(_fold(name))
        return f"v0.1/servers/{namespace}/{server}/versions"

    def kept(self, group: ServerGroup) -> list[ServedVersion]:
        kept: list[ServedVersion] = []
        seen: set[str] = set()
        for v in group.allowed(include_deprecated=self.options.include_deprecated):
            why = _refusal(v.version, (_INDEX, _LATEST))
            if why is None and _fold(v.version) in seen:
                why = "another version differs from it only in case or Unicode form"
            if why:
                self.warn(f"{group.name!r} version {v.version!r} is left out: {why}.")
                continue
            seen.add(_fold(v.version))
            kept.append(v)
        return kept

    def server(self, group: ServerGroup) -> None:
        if not group.allowed(include_deprecated=self.options.include_deprecated):
            return  # nothing admitted: the server is simply not in the export
        folder = self.folder(group.name)
        kept = self.kept(group) if folder else []
        if folder is None or not kept:
            return
        newest_first = sorted(kept, key=lambda v: (v.published_at, v.version), reverse=True)
        self.put(f"{folder}/{_INDEX}", _envelope(newest_first))
        for v in kept:
            self.put(f"{folder}/{v.version}", _item(v) + b"\n")
        latest = ServerGroup(group.name, tuple(kept)).current(
            include_deprecated=self.options.include_deprecated
        )
        assert latest is not None  # every kept version is admitted
        self.put(f"{folder}/{_LATEST}", _item(latest) + b"\n")
        for v in kept:
            self.out.write((b"," if self.listed else b"") + _item(v))
            self.listed += 1
        self.result.servers += 1

    def put(self, path: str, data: bytes) -> None:
        self.sink.write(path, data)
        self.result.entries += 1


async def export(
    servers: AsyncIterator[ServerGroup], options: ExportOptions, sink: Sink
) -> ExportResult:
    """Write the tree through `sink`; the list file is committed last, so a host serving the
    folder while it is rewritten never lists a version whose file is not there yet."""
    with sink.stream(LIST) as out:
        tree = _Tree(options, sink, out)
        out.write(b'{"servers":[')
        async for group in servers:
            tree.server(group)
        out.write(b'],"metadata":{"count":%d}}\n' % tree.listed)
    tree.put(".nojekyll", b"")
    tree.result.entries += 1  # the list file
    return tree.result
