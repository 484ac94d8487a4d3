"""structlog set-up: JSON lines off a terminal, readable console output on one.

The libraries underneath (aiohttp's server and client, asyncio, the scheduler) log through the
standard `logging` module; their records go through the same renderer, so a JSON log stream
holds nothing but JSON lines, tracebacks included.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from sync.config import LoggingConfig

__all__ = ["configure_logging", "redact"]

_SECRET_KEYS = frozenset({"authorization", "headers", "token", "password", "cookie"})
# Loggers whose records the daemon's own level governs; every other library speaks only when
# something is wrong (warnings and up), as Python's fallback handler let it before.
_OWN_LEVEL = ("aiohttp", "asyncio")


def redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Last line of defence: values under secret-looking keys never reach the output."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


class _StructlogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler this module installs on the root logger (found again to replace it)."""


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    as_json = config.format == "json" or (config.format == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    # dict_tracebacks turns exc_info into a list of frames: one JSON line, not a text block.
    final: list[Any] = [structlog.processors.dict_tracebacks] if as_json else []
    level = logging.getLevelNamesMapping()[config.level.upper()]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, *final, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(stream, level, shared, [*final, renderer])


def _route_stdlib(stream: TextIO, level: int, shared: list[Any], final: list[Any]) -> None:
    """Render records of the standard `logging` module as structlog events on `stream`."""
    handler = _StructlogHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    for name in _OWN_LEVEL:
        logging.getLogger(name).setLevel(level)
    # Python's warnings (deprecations, unclosed resources) print text to stderr otherwise.
    logging.captureWarnings(True)
