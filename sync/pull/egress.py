"""How one upstream's requests leave the machine: through which proxy, with which TLS context,
and which secrets an error message about them must never show."""

from __future__ import annotations

import ssl
import urllib.request

from yarl import URL

from sync.config import UpstreamConfig
from sync.credentials import tls_context

__all__ = ["Egress", "env_proxies"]


def env_proxies() -> dict[str, str]:
    """HTTP_PROXY, HTTPS_PROXY and NO_PROXY (lowercase first), as curl and requests read them.

    Not aiohttp's `trust_env`: it would also send credentials from ~/.netrc, and this daemon
    sends no credential its configuration does not name.
    """
    found = urllib.request.getproxies_environment()
    for scheme in ("http", "https"):
        value = found.get(scheme)
        if value and "://" not in value:
            found[scheme] = f"http://{value}"  # a bare host:port, as curl accepts it
    return found


def _forms(texts: list[str]) -> list[str]:
    """Every form in which a secret could appear in an error message, longest first."""
    found: set[str] = set()
    for text in texts:
        found.add(text)
        try:
            url = URL(text)
        except ValueError:
            continue
        if url.absolute:
            found.update(v for v in (url.password, url.raw_password) if v)
    return sorted((t for t in found if t), key=len, reverse=True)


class BadProxy(ValueError):
    """The environment names a proxy this client cannot use."""


class Egress:
    """Decided once per upstream client: the environment is read when the client starts."""

    def __init__(self, config: UpstreamConfig) -> None:
        self._env = env_proxies()
        self._proxy = URL(config.proxy.get_secret_value()) if config.proxy is not None else None
        # The client certificate is a credential too: presented to the upstream's origin only.
        self._home: ssl.SSLContext | bool = True
        self._elsewhere: ssl.SSLContext | bool = True
        if config.ca_file is not None or config.client_cert is not None:
            self._home = tls_context(config.ca_file, config.client_cert, config.client_key)
            self._elsewhere = tls_context(config.ca_file, None, None)
        secrets = [v.get_secret_value() for v in config.headers.values()]
        if config.proxy is not None:
            secrets.append(config.proxy.get_secret_value())
        secrets += [v for k, v in self._env.items() if k != "no"]
        self._secrets = _forms(secrets)

    def proxy(self, url: URL) -> URL | None:
        """This upstream's own proxy if it has one (for every request, whatever NO_PROXY
        says), else the environment's for the URL's scheme unless NO_PROXY exempts the host."""
        if self._proxy is not None:
            return self._proxy
        value = self._env.get(url.scheme)
        # NO_PROXY from the environment (macOS and Windows add their system settings).
        if not value or (url.host and urllib.request.proxy_bypass(url.host)):
            return None
        try:
            proxy = URL(value)
        except ValueError:
            proxy = URL()
        if proxy.scheme != "http" or not proxy.host:
            raise BadProxy(
                f"the {url.scheme}_proxy environment variable must be an http:// proxy URL "
                "(a proxy reached over TLS is not supported)"
            )
        return proxy

    def tls(self, *, home: bool) -> ssl.SSLContext | bool:
        return self._home if home else self._elsewhere

    def hide(self, text: str) -> str:
        """An error message fit for logs and `status`: no header value or proxy password."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
