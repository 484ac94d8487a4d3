"""structlog set-up: JSON lines off a terminal, readable console output on one."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from sync.config import LoggingConfig

__all__ = ["configure_logging", "redact"]

_SECRET_KEYS = frozenset({"authorization", "headers", "token", "password", "cookie"})


def redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Last line of defence: values under secret-looking keys never reach the output."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    as_json = config.format == "json" or (config.format == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if as_json:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[config.level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
