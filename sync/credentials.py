"""Secrets and TLS material of an upstream, read when the configuration is loaded.

Tokens stay out of the TOML (and so out of a Kubernetes ConfigMap): a header value or a proxy
URL may name an environment variable or a file (a mounted Secret) instead. They are read at
load time, so loading the configuration again re-reads them, and a missing one stops the
daemon at start-up with the key named rather than at its first request.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, SecretStr
from yarl import URL

__all__ = [
    "CaFile",
    "check_ca_file",
    "check_client_cert",
    "resolve_proxy",
    "resolve_secret",
    "tls_context",
]

_SOURCE_KEYS = frozenset({"env", "file", "prefix"})
_FORM = 'a string, or a table such as { env = "REGISTRY_TOKEN", prefix = "Bearer " }'


def _from_env(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("'env' must name an environment variable")
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    return value


def _from_file(path: object) -> str:
    if not isinstance(path, str) or not path:
        raise ValueError("'file' must be a path")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    # `echo token > file` and most editors end the file with a newline that is no part of it.
    return text.rstrip("\r\n")


def resolve_secret(value: object) -> SecretStr:
    """The secret a TOML value stands for: the string itself, or the content of the
    environment variable or file a `{env|file, prefix}` table names, with the prefix before it.

    Error messages name where the secret was looked for, never what it holds.
    """
    if isinstance(value, SecretStr):
        return value
    if isinstance(value, str):
        text = value
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - _SOURCE_KEYS)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}: expected {_FORM}")
        if ("env" in value) == ("file" in value):
            raise ValueError("set exactly one of 'env' (a variable name) or 'file' (a path)")
        prefix = value.get("prefix", "")
        if not isinstance(prefix, str):
            raise ValueError("'prefix' must be a string")
        found = _from_env(value["env"]) if "env" in value else _from_file(value["file"])
        if not found:
            where = f"environment variable {value['env']}" if "env" in value else value["file"]
            raise ValueError(f"{where} is empty")
        text = prefix + found
    else:
        raise ValueError(f"expected {_FORM}")
    if any(c in text for c in "\r\n\0"):
        # It would end the header early (or split it in two) on the wire.
        raise ValueError("contains a line break or NUL, which no header value may hold")
    return SecretStr(text)


def resolve_proxy(value: object) -> SecretStr | None:
    """A proxy URL, possibly with credentials, so it is a secret as a whole."""
    if value is None:
        return None
    secret = resolve_secret(value)
    try:
        url = URL(secret.get_secret_value())
    except ValueError:
        url = URL()
    if url.scheme != "http" or not url.host or url.path not in ("", "/") or url.query_string:
        # The value is not echoed: it may hold the proxy's password.
        raise ValueError(
            "must be an http:// proxy URL such as http://user:password@proxy.example.com:3128 "
            "(a proxy reached over TLS is not supported)"
        )
    return secret


def _no_passphrase(*_: object) -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang a daemon.
    raise ValueError("the key is encrypted: give an unencrypted key (mount it as a Secret)")


def tls_context(
    ca_file: Path | None, client_cert: Path | None, client_key: Path | None
) -> ssl.SSLContext:
    """Verification against the system's trust store plus `ca_file` (a private CA is added,
    not substituted, so one upstream can sit behind a TLS-inspecting proxy and still reach
    public hosts), presenting `client_cert` when the server asks for one."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    if client_cert is not None:
        context.load_cert_chain(client_cert, client_key, password=_no_passphrase)
    return context


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror
    return str(exc) or type(exc).__name__


def check_ca_file(path: Path) -> None:
    """Refuse at load time a bundle that would only fail at the first request."""
    try:
        tls_context(path, None, None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot use {path} as a CA bundle: {_reason(exc)}") from None


def check_client_cert(cert: Path, key: Path | None) -> None:
    try:
        tls_context(None, cert, key)
    except (OSError, ValueError) as exc:
        what = f"{cert} and {key}" if key else str(cert)
        raise ValueError(
            f"client_cert: cannot use {what} as a client certificate and key: {_reason(exc)}"
        ) from None


def _checked_ca_file(value: Path | None) -> Path | None:
    if value is not None:
        check_ca_file(value)
    return value


# A PEM bundle of extra CAs (an upstream's, an OIDC issuer's), checked when the configuration
# loads so a bad one stops the daemon naming the key rather than failing its first request.
CaFile = Annotated[Path | None, AfterValidator(_checked_ca_file)]
