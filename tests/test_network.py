"""Corporate networks and secrets (issue #11): proxies, private CAs, mTLS, tokens kept out of
the configuration file, and a warning for every retry.

Real parts only: a forwarding proxy (`tests/proxy.py`) and the fake registry on loopback ports,
the registry served over TLS with certificates from a CA made in the test (trustme), real
SQLite, and real `subregistry` processes where what an operator sees matters.
"""

from __future__ import annotations

import json
import re
import ssl
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiohttp import web
from structlog.testing import capture_logs

from sync.config import Config, config_from_mapping, load_config
from sync.errors import ConfigError
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.pull.passes import PassResult
from sync.store.sqlite.writer import SqliteStore
from tests.cli_helpers import TOKEN, free_port, run, write_config
from tests.fake_upstream import FakeRegistry
from tests.helpers import no_sleep, serving
from tests.proxy import Proxy

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "REQUEST_METHOD")
SMALL = 150  # two pages: enough to see every request of a pass go the same way
DEPLOY = Path(__file__).parent.parent / "deploy"


@pytest.fixture(autouse=True)
def _no_inherited_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test decides the proxy environment itself, whatever the machine has."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def small(catalogue: list[dict[str, Any]]) -> FakeRegistry:
    return FakeRegistry(json.loads(json.dumps(catalogue[:SMALL])))


class Recorded:
    """The fake registry's app, noting the headers of every request that reached it."""

    def __init__(self, fake: FakeRegistry) -> None:
        self.headers: list[dict[str, str]] = []
        self.app = fake.app()

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            response: web.StreamResponse = await handler(request)
            return response

        self.app.middlewares.append(record)


class Pki:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate, on disk."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        client = self.ca.issue_cert("mirror@example.org")
        self.client_cert = directory / "client-cert.pem"
        self.client_key = directory / "client-key.pem"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))

    def server(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._leaf.configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def one_pass(config: Config, *, backoff: tuple[float, float] = (0.0, 0.0)) -> PassResult:
    store = await SqliteStore.open(config.storage.path)
    engine = Engine(config, store, Metrics(), sleep=no_sleep, backoff=backoff)
    try:
        await engine.startup()
        return await engine.run(config.upstreams[0].name)
    finally:
        await engine.close()
        await store.close()


MakeConfig = Callable[..., Config]


class TestProxies:
    @pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
    async def test_environment_proxy_forwards_every_request(
        self,
        small: FakeRegistry,
        make_config: MakeConfig,
        monkeypatch: pytest.MonkeyPatch,
        variable: str,
    ) -> None:
        """HTTP_PROXY (either case) carries every request; its credentials reach the proxy
        only, and the upstream's header still reaches the upstream."""
        upstream = Recorded(small)
        async with serving(upstream.app) as url, Proxy(("corp", "pr0xy-pass")) as proxy:
            monkeypatch.setenv(variable, proxy.url)
            config = make_config({"name": "official", "url": url, "headers": {"X-Token": TOKEN}})
            result = await one_pass(config)
        assert result.outcome == "ok", result.error
        assert result.counts.inserted == SMALL
        assert len(proxy.seen) == len(upstream.headers) == 2
        assert all(
            s.method == "GET" and s.target.startswith(f"{url}/v0.1/servers?") for s in proxy.seen
        )
        assert all(s.headers["proxy-authorization"].startswith("Basic ") for s in proxy.seen)
        assert all("proxy-authorization" not in h for h in upstream.headers)
        assert all(h["x-token"] == TOKEN for h in upstream.headers)

    @pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
    async def test_no_proxy_goes_direct(
        self,
        small: FakeRegistry,
        make_config: MakeConfig,
        monkeypatch: pytest.MonkeyPatch,
        variable: str,
    ) -> None:
        """A host NO_PROXY names is reached directly; the proxy sees nothing. A host it does
        not name still goes through the proxy."""
        upstream = Recorded(small)
        async with serving(upstream.app) as url, Proxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            config = make_config({"name": "official", "url": url})
            monkeypatch.setenv(variable, "example.com")
            proxied = await one_pass(config)
            assert proxied.outcome == "ok", proxied.error
            assert len(proxy.seen) == len(upstream.headers) == 2
            monkeypatch.setenv(variable, "example.com,127.0.0.1")
            direct = await one_pass(config)
        assert direct.outcome == "ok", direct.error
        assert len(proxy.seen) == 2 and len(upstream.headers) == 3  # one incremental page

    async def test_upstream_proxy_overrides_the_environment(
        self, small: FakeRegistry, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An upstream's own `proxy` carries all its requests, whatever HTTP_PROXY and
        NO_PROXY say."""
        upstream = Recorded(small)
        async with (
            serving(upstream.app) as url,
            Proxy() as environment,
            Proxy(("team", "s3cret")) as own,
        ):
            monkeypatch.setenv("HTTP_PROXY", environment.url)
            monkeypatch.setenv("NO_PROXY", "*")
            result = await one_pass(make_config({"name": "official", "url": url, "proxy": own.url}))
        assert result.outcome == "ok", result.error
        assert environment.seen == [] and len(own.seen) == 2
        assert all("proxy-authorization" not in h for h in upstream.headers)

    async def test_proxy_credentials_are_never_shown(
        self, small: FakeRegistry, tmp_path: Path
    ) -> None:
        """A proxy that refuses the credentials fails the pass (once, not retried) with a
        message naming the upstream; the password is in no output and no status."""
        upstream = Recorded(small)
        async with serving(upstream.app) as url, Proxy(("team", "right-pass")) as proxy:
            wrong = proxy.url.replace("right-pass", "wr0ng-pass")
            config = write_config(tmp_path, url, f'proxy = "{wrong}"\n')
            code, out, err = await run("--config", config, "sync")
            status = await run("--config", config, "status", "--json")
        assert code == 1 and out.startswith("official: failed")
        assert "407" in out and "Traceback" not in err
        assert len(proxy.seen) == 1 and upstream.headers == []
        assert status[0] == 0
        [state] = json.loads(status[1])["upstreams"]
        assert "407" in state["last_error"]
        for text in (out, err, *status[1:]):
            assert "wr0ng-pass" not in text and TOKEN not in text

    async def test_an_unreachable_proxy_is_retried_and_named(
        self, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A proxy that is down is a transient failure like an upstream that is down; its
        credentials stay out of the message."""
        monkeypatch.setenv("HTTP_PROXY", f"http://corp:hush-hush@127.0.0.1:{free_port()}")
        config = make_config({"name": "official", "url": "http://127.0.0.1:9", "retries": 1})
        with capture_logs() as events:
            result = await one_pass(config)
        assert result.outcome == "failed" and result.error
        assert result.error.startswith("official: ")
        [retry] = [e for e in events if e["event"] == "sync.retrying"]
        assert "hush-hush" not in repr(events) + result.error and retry["reason"] == result.error

    @pytest.mark.parametrize(
        "proxy", ["https://proxy.example.com:3128", "socks5://127.0.0.1:1080", "proxy:3128"]
    )
    def test_only_http_proxy_urls_are_accepted(self, proxy: str) -> None:
        with pytest.raises(ConfigError, match=r"upstreams\[0\]\.proxy: .*http:// proxy URL"):
            config_from_mapping({"upstreams": [{"name": "a", "url": "http://x", "proxy": proxy}]})


class TestTls:
    async def test_private_ca_in_ca_file(
        self, small: FakeRegistry, make_config: MakeConfig, pki: Pki
    ) -> None:
        upstream = Recorded(small)
        async with serving(upstream.app, pki.server()) as url:
            assert url.startswith("https://")
            config = make_config({"name": "official", "url": url, "ca_file": str(pki.ca_file)})
            result = await one_pass(config)
        assert result.outcome == "ok", result.error
        assert result.counts.inserted == SMALL

    async def test_untrusted_certificate_fails_the_pass_naming_the_upstream(
        self, small: FakeRegistry, tmp_path: Path, pki: Pki
    ) -> None:
        """Without `ca_file` the certificate is refused: a failed pass (exit 1, recorded in
        `status`) with one message that names the upstream and says what to set, no retry."""
        upstream = Recorded(small)
        async with serving(upstream.app, pki.server()) as url:
            config = write_config(tmp_path, url)
            code, out, err = await run("--config", config, "sync")
            status = await run("--config", config, "status", "--json")
        assert code == 1, err
        assert out.startswith("official: failed") and "certificate" in out and "ca_file" in out
        events = [json.loads(line) for line in err.splitlines()]
        assert not [e for e in events if e["event"] == "sync.retrying"]
        assert "Traceback" not in err and upstream.headers == []
        [state] = json.loads(status[1])["upstreams"]
        assert "ca_file" in state["last_error"]
        assert state["recent_passes"][0]["outcome"] == "failed"

    async def test_https_through_a_connect_tunnel(
        self,
        small: FakeRegistry,
        make_config: MakeConfig,
        pki: Pki,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """HTTPS_PROXY tunnels with CONNECT: the proxy sees the target and its own credentials,
        never the upstream's header, which arrives through the tunnel."""
        upstream = Recorded(small)
        async with serving(upstream.app, pki.server()) as url, Proxy(("corp", "pw")) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            config = make_config(
                {
                    "name": "official",
                    "url": url,
                    "ca_file": str(pki.ca_file),
                    "headers": {"Authorization": f"Bearer {TOKEN}"},
                }
            )
            result = await one_pass(config)
        assert result.outcome == "ok", result.error
        target = url.removeprefix("https://")
        assert proxy.seen and all(s.method == "CONNECT" and s.target == target for s in proxy.seen)
        assert all("authorization" not in s.headers for s in proxy.seen)
        assert all("proxy-authorization" in s.headers for s in proxy.seen)
        assert len(upstream.headers) == 2
        assert all(h["authorization"] == f"Bearer {TOKEN}" for h in upstream.headers)
        assert all("proxy-authorization" not in h for h in upstream.headers)

    async def test_mutual_tls(self, small: FakeRegistry, make_config: MakeConfig, pki: Pki) -> None:
        """A server that requires a client certificate gets the configured one, and refuses a
        mirror without one (a failed pass, the server saw no request)."""
        upstream = Recorded(small)
        async with serving(upstream.app, pki.server(require_client_cert=True)) as url:
            base = {"name": "official", "url": url, "ca_file": str(pki.ca_file), "retries": 1}
            refused = await one_pass(make_config(base))
            assert refused.outcome == "failed" and refused.error
            assert refused.error.startswith("official: ") and upstream.headers == []
            with_cert = {
                **base,
                "client_cert": str(pki.client_cert),
                "client_key": str(pki.client_key),
            }
            result = await one_pass(make_config(with_cert))
        assert result.outcome == "ok", result.error
        assert result.counts.inserted == SMALL

    async def test_client_certificate_stays_with_its_origin(
        self, small: FakeRegistry, make_config: MakeConfig, pki: Pki
    ) -> None:
        """A followed redirect to another origin does not present the client certificate."""

        async def moved(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(f"{elsewhere}{request.path_qs}")

        front = web.Application()
        front.router.add_get("/v0.1/servers", moved)
        tls = pki.server(require_client_cert=True)
        async with serving(small.app(), tls) as elsewhere, serving(front, pki.server()) as url:
            config = make_config(
                {
                    "name": "official",
                    "url": url,
                    "follow_redirects": True,
                    "retries": 0,
                    "ca_file": str(pki.ca_file),
                    "client_cert": str(pki.client_cert),
                    "client_key": str(pki.client_key),
                }
            )
            result = await one_pass(config)
        assert result.outcome == "failed" and small.requests == []

    def test_bad_tls_files_are_configuration_errors(self, tmp_path: Path, pki: Pki) -> None:
        def load(**upstream: Any) -> None:
            config_from_mapping({"upstreams": [{"name": "a", "url": "https://x", **upstream}]})

        with pytest.raises(ConfigError, match=r"upstreams\[0\]\.ca_file: .*No such file"):
            load(ca_file=str(tmp_path / "missing.pem"))
        with pytest.raises(ConfigError, match=r"upstreams\[0\]\.ca_file: .*as a CA bundle"):
            load(ca_file=str(pki.client_key))
        with pytest.raises(ConfigError, match=r"upstreams\[0\]: .*client_cert: cannot use"):
            load(client_cert=str(pki.client_cert))  # the key is in another file
        with pytest.raises(ConfigError, match=r"client_key needs client_cert"):
            load(client_key=str(pki.client_key))
        with pytest.raises(ConfigError, match=r"'url' upstreams only"):
            config_from_mapping(
                {"upstreams": [{"name": "a", "path": "x.json", "ca_file": str(pki.ca_file)}]}
            )
        load(client_cert=str(pki.client_cert), client_key=str(pki.client_key))


class TestSecretSources:
    async def test_headers_from_environment_and_file(
        self,
        small: FakeRegistry,
        make_config: MakeConfig,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """`{ env = ... }` and `{ file = ... }` (its trailing newline dropped), each with a
        prefix, reach the upstream as the header's value."""
        monkeypatch.setenv("REGISTRY_TOKEN", TOKEN)
        secret = tmp_path / "token"
        secret.write_text("file-token\n")
        upstream = Recorded(small)
        async with serving(upstream.app) as url:
            headers = {
                "Authorization": {"env": "REGISTRY_TOKEN", "prefix": "Bearer "},
                "X-Api-Key": {"file": str(secret)},
            }
            result = await one_pass(
                make_config({"name": "official", "url": url, "headers": headers})
            )
        assert result.outcome == "ok", result.error
        assert {h["authorization"] for h in upstream.headers} == {f"Bearer {TOKEN}"}
        assert {h["x-api-key"] for h in upstream.headers} == {"file-token"}

    def test_loading_again_reads_the_secret_again(self, tmp_path: Path) -> None:
        """A rotated Secret is picked up by the next load of the configuration."""
        secret = tmp_path / "token"
        path = tmp_path / "subregistry.toml"
        path.write_text(
            f'[[upstreams]]\nname = "a"\nurl = "https://x"\n'
            f'headers = {{ Authorization = {{ file = "{secret}", prefix = "Bearer " }} }}\n'
        )
        values = []
        for token in ("first", "second"):
            secret.write_text(token + "\r\n")
            header = load_config(path).upstreams[0].headers["Authorization"]
            values.append(header.get_secret_value())
        assert values == ["Bearer first", "Bearer second"]

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (
                {"env": "SUBREGISTRY_TEST_UNSET"},
                "environment variable SUBREGISTRY_TEST_UNSET is not set",
            ),
            ({"file": "/nonexistent/token"}, "cannot read /nonexistent/token: No such file"),
            ({"env": "A", "file": "b"}, "exactly one of 'env'"),
            ({"prefix": "Bearer "}, "exactly one of 'env'"),
            ({"env": "A", "value": "x"}, "unknown key 'value'"),
            ({"env": "SUBREGISTRY_TEST_EMPTY"}, "SUBREGISTRY_TEST_EMPTY is empty"),
            ({"env": "SUBREGISTRY_TEST_SPLIT"}, "line break"),
            ("Bearer abc\r\nX-Evil: 1", "line break"),
            (42, "expected a string, or a table"),
        ],
    )
    def test_an_unusable_secret_names_its_key(
        self, monkeypatch: pytest.MonkeyPatch, value: Any, message: str
    ) -> None:
        monkeypatch.delenv("SUBREGISTRY_TEST_UNSET", raising=False)
        monkeypatch.setenv("SUBREGISTRY_TEST_EMPTY", "")
        monkeypatch.setenv("SUBREGISTRY_TEST_SPLIT", "hidden-part\nX-Evil: 1")
        with pytest.raises(ConfigError) as raised:
            config_from_mapping(
                {
                    "upstreams": [
                        {"name": "a", "url": "https://x", "headers": {"Authorization": value}}
                    ]
                }
            )
        [line] = [x for x in str(raised.value).splitlines() if "headers.Authorization" in x]
        assert line.startswith("  upstreams[0].headers.Authorization: Value error, ")
        assert message in line
        assert "hidden-part" not in str(raised.value) and "abc" not in str(raised.value)

    async def test_missing_secret_exits_2(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("SUBREGISTRY_TEST_UNSET", raising=False)
        config = write_config(
            tmp_path,
            "http://127.0.0.1:9",
            'headers = { X-Key = { env = "SUBREGISTRY_TEST_UNSET" } }\n',
        )
        text = config.read_text().replace(f'headers = {{ Authorization = "Bearer {TOKEN}" }}\n', "")
        config.write_text(text)
        code, out, err = await run("--config", config, "sync")
        assert code == 2 and out == ""
        assert err.startswith("subregistry: invalid configuration")
        assert "upstreams[0].headers.X-Key" in err and "SUBREGISTRY_TEST_UNSET is not set" in err
        assert "Traceback" not in err

    async def test_status_and_logs_never_show_a_secret_from_the_environment(
        self, small: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("REGISTRY_TOKEN", "env-s3cret")
        upstream = Recorded(small)
        async with serving(upstream.app) as url:
            config = write_config(tmp_path, url)
            config.write_text(
                config.read_text().replace(
                    f'"Bearer {TOKEN}"', '{ env = "REGISTRY_TOKEN", prefix = "Bearer " }'
                )
            )
            sync = await run("--config", config, "sync")
            status = await run("--config", config, "status", "--json")
        assert sync[0] == 0 and status[0] == 0, sync[2] + status[2]
        assert {h["authorization"] for h in upstream.headers} == {"Bearer env-s3cret"}
        [state] = json.loads(status[1])["upstreams"]
        assert state["headers"] == {"Authorization": "***"}
        assert not any("env-s3cret" in text for text in (*sync[1:], *status[1:]))


class TestDeployKits:
    def test_kubernetes_token_comes_from_a_secret(self, tmp_path: Path) -> None:
        """The Deployment mounts a Secret where the ConfigMap's (commented) private upstream
        reads its token, and it still starts when no such Secret exists."""
        docs = list(yaml.safe_load_all((DEPLOY / "kubernetes/subregistry.yaml").read_text()))
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
        pod = deployment["spec"]["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["optional"] is True
        [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        # The example, uncommented, is a valid configuration reading the mounted file.
        toml: str = configmap["data"]["subregistry.toml"]
        example = re.sub(r"(?m)^# (\[\[upstreams\]\]|name|url|headers)", r"\1", toml)
        (tmp_path / "registry-token").write_text("k8s-token\n")
        config = config_from_mapping(
            tomllib.loads(example.replace(mount["mountPath"], str(tmp_path)))
        )
        private, official = config.upstreams
        assert private.headers["Authorization"].get_secret_value() == "Bearer k8s-token"
        assert not official.headers

    def test_compose_token_comes_from_an_env_file(self) -> None:
        compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
        [env_file] = compose["services"]["subregistry"]["env_file"]
        assert env_file["required"] is False and not (DEPLOY / env_file["path"]).exists()


class TestRetryWarnings:
    async def test_refused_connection_warns_before_each_retry(
        self, make_config: MakeConfig
    ) -> None:
        config = make_config(
            {"name": "official", "url": f"http://127.0.0.1:{free_port()}", "retries": 2}
        )
        with capture_logs() as events:
            result = await one_pass(config, backoff=(0.5, 4.0))
        assert result.outcome == "failed"
        retries = [e for e in events if e["event"] == "sync.retrying"]
        assert [e["attempt"] for e in retries] == [1, 2]
        for event in retries:
            assert event["log_level"] == "warning" and event["upstream"] == "official"
            assert event["attempts"] == 3 and event["wait_s"] > 0
            assert event["reason"].startswith("official: Cannot connect to host 127.0.0.1")

    async def test_503_and_429_warn_with_the_wait_chosen(
        self, small: FakeRegistry, make_config: MakeConfig
    ) -> None:
        """The wait logged is the one slept: backoff after a 503, the upstream's Retry-After
        after a 429; the upstream's token is in no event."""
        small.fail(503)
        small.fail(429, headers={"Retry-After": "7"})
        async with serving(small.app()) as url:
            config = make_config(
                {"name": "official", "url": url, "headers": {"Authorization": TOKEN}}
            )
            with capture_logs() as events:
                result = await one_pass(config, backoff=(0.5, 4.0))
        assert result.outcome == "ok", result.error
        first, second = [e for e in events if e["event"] == "sync.retrying"]
        assert (first["attempt"], first["reason"]) == (1, "official: HTTP 503")
        assert 0.5 <= first["wait_s"] <= 1.0  # initial backoff plus at most its jitter
        assert (second["attempt"], second["reason"], second["wait_s"]) == (
            2,
            "official: rate limited (429)",
            7.0,
        )
        assert TOKEN not in repr(events)

    async def test_a_real_process_speaks_before_it_gives_up(self, tmp_path: Path) -> None:
        """The operator's log shows the retry (JSON, warning level) before the pass fails."""
        config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}")
        code, _, err = await run("--config", config, "sync")
        assert code == 1
        names = [json.loads(line)["event"] for line in err.splitlines()]
        assert names.index("sync.retrying") < names.index("sync.finished")
        [warning] = [json.loads(line) for line in err.splitlines() if "sync.retrying" in line]
        assert (
            warning["level"] == "warning" and warning["attempt"] == 1 and warning["attempts"] == 2
        )
        assert TOKEN not in err
