"""Connections to a PostgreSQL store: how every one of them is opened and named.

No server-side prepared statements (`prepare_threshold=None`): PgBouncer in transaction mode
hands each transaction to any server connection, where a statement prepared on another one
does not exist. Every connection carries `application_name = "subregistry " + holder`, so a
successor can find (and terminate) the backends of a stalled leader.
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from sync.errors import StoreError

__all__ = ["APPLICATION", "connect", "holder_id", "redact", "short"]

APPLICATION = "subregistry "
# PostgreSQL truncates application_name to 63 bytes: the holder must fit whole.
_NAME_BYTES = 63


@cache
def holder_id() -> str:
    """This process's identity in the `leadership` row and in `application_name`: host, pid
    and a random part, so that a restarted process with a recycled pid is another holder."""
    host = socket.gethostname()[:24]
    return f"{host}/{os.getpid()}/{secrets.token_hex(6)}"


def application_name(holder: str) -> str:
    return (APPLICATION + holder).encode()[:_NAME_BYTES].decode(errors="ignore")


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rpartition("@")
    user = (parts.username or "") + "@"
    return urlunsplit(parts._replace(netloc=user + netloc[2]))


def short(exc: BaseException) -> str:
    """A psycopg error in one line (the server's primary message, without its context)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def options(holder: str) -> dict[str, Any]:
    """Keyword arguments every connection of this process is opened with."""
    return {
        "prepare_threshold": None,
        "application_name": application_name(holder),
        "connect_timeout": 10,
        # A peer gone silent (a partition, a dead host) is noticed in about 25 s, not after
        # the kernel's two hours: no call on a dead connection outlasts a lease for long.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 25_000,
    }


async def connect(
    dsn: str, holder: str, *, autocommit: bool = True
) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    """One connection, named after `holder`; failure to reach the server is a StoreError."""
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, **options(holder))
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to {redact(dsn)}: {short(exc)}") from None
