"""Configuration from the environment, paths relative to the file, interval floors, ISO 8601
durations, and `subregistry check` (issue #11)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from pydantic import BaseModel

from sync.config import Config, FilterConfig, load_config, parse_duration
from sync.errors import ConfigError
from sync.ruleconfig import Frozen
from tests.cli_helpers import TOKEN, run, write_config
from tests.fake_upstream import FakeRegistry

ROOT = Path(__file__).parent.parent
HTTP = '[[upstreams]]\nname = "official"\nurl = "https://registry.example.org"\n'


def _file(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _error(path: Path | None, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(path, env=env)
    return str(error.value)


def _scalars(model: type[BaseModel], var: str, value: Any) -> list[tuple[str, str, Any]]:
    """(variable, key, default) for every scalar setting of `model` with a non-None default:
    enumerated here from the models, independently of the code under test."""
    found = []
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, bool | int | float | str | Path) and name != "name":
            found.append((f"{var}{name.upper()}", name, getattr(value, name)))
    return found


class TestEnvironment:
    def test_every_scalar_setting_has_a_variable(self, tmp_path: Path) -> None:
        """Each section's and each upstream's scalar keys: SUBREGISTRY_<SECTION>__<KEY>."""
        defaults = Config()
        cases = []
        for section, field in Config.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                prefix = f"SUBREGISTRY_{section.upper()}__"
                cases += [
                    (v, (section, k), d)
                    for v, k, d in _scalars(field.annotation, prefix, getattr(defaults, section))
                ]
        upstream = defaults.upstreams[0]
        cases += [
            (v, ("upstreams", k), d)
            for v, k, d in _scalars(type(upstream), "SUBREGISTRY_UPSTREAMS__OFFICIAL__", upstream)
        ]
        assert len(cases) >= 25  # storage, mirror, api, logging, filter and upstream keys
        for var, (section, key), default in cases:
            # The default spelled as text comes back as the default...
            value = str(default).lower() if isinstance(default, bool) else str(default)
            got = self._read(load_config(None, env={var: value}), section, key)
            assert got == (Path(default).absolute() if isinstance(default, Path) else default)
            # ...and a value no default has is either taken as it is or refused by name.
            try:
                got, refused = self._read(load_config(None, env={var: "?!"}), section, key), ""
            except ConfigError as error:
                got, refused = None, str(error)
            assert f" (from {var}): " in refused or got in ("?!", Path("?!").absolute()), var

    @staticmethod
    def _read(config: Config, section: str, key: str) -> Any:
        return getattr(
            config.upstreams[0] if section == "upstreams" else getattr(config, section), key
        )

    def test_values_are_parsed_as_their_fields_want(self) -> None:
        config = load_config(
            None,
            env={
                "SUBREGISTRY_API__PORT": "9090",
                "SUBREGISTRY_API__CACHE_MB": "0.5",
                "SUBREGISTRY_API__HEADER_TIMEOUT": "PT30S",
                "SUBREGISTRY_LOGGING__FORMAT": "console",
                "SUBREGISTRY_MIRROR__NAMESPACE": "com.example.mirror",
                "SUBREGISTRY_FILTER__REMOTES": "off",
                "SUBREGISTRY_UPSTREAMS__OFFICIAL__MAX_STALENESS": "6h",
                "SUBREGISTRY_UPSTREAMS__OFFICIAL__URL": "https://registry.example.org/",
            },
        )
        assert (config.api.port, config.api.cache_mb, config.api.header_timeout) == (9090, 0.5, 30)
        assert config.logging.format == "console"
        assert config.mirror.namespace == "com.example.mirror"
        assert config.filter.remotes is False
        assert config.upstreams[0].max_staleness == 21600.0
        assert config.upstreams[0].url == "https://registry.example.org"  # its validator ran

    def test_overrides_sit_on_top_of_the_file_and_of_the_defaults(self, tmp_path: Path) -> None:
        path = _file(
            tmp_path,
            '[api]\nport = 8081\nhost = "0.0.0.0"\n'
            '[[upstreams]]\nname = "my-mirror"\nurl = "https://a.example.org"\ninterval = "3h"\n'
            '[[upstreams]]\nname = "official"\nurl = "https://registry.example.org"\n',
        )
        config = load_config(
            path,
            env={
                "SUBREGISTRY_API__PORT": "9090",
                "SUBREGISTRY_LOGGING__LEVEL": "debug",
                "SUBREGISTRY_UPSTREAMS__MY_MIRROR__INTERVAL": "2h",
                "SUBREGISTRY_UPSTREAMS__OFFICIAL__FOLLOW_REDIRECTS": "true",
                "SUBREGISTRY_UPSTREAMS__OFFICIAL__FILTER__REMOTES": "false",
                "SUBREGISTRY_FILTER__LATEST_VERSIONS": "3",
                "PATH": "/usr/bin",  # not ours: ignored
            },
        )
        assert (config.api.port, config.api.host) == (9090, "0.0.0.0")  # env over the file
        assert config.logging.level == "debug"  # env over a default
        mine, official = config.upstreams
        assert (mine.interval, official.interval) == (7200.0, 3600.0)
        assert official.follow_redirects and not mine.follow_redirects
        assert official.filter == FilterConfig(remotes=False) and mine.filter is None
        assert config.filter.latest_versions == 3

    def test_the_default_upstream_is_addressable_without_a_file(self) -> None:
        config = load_config(None, env={"SUBREGISTRY_UPSTREAMS__OFFICIAL__INTERVAL": "PT2H"})
        [official] = config.upstreams
        assert official.url == "https://registry.modelcontextprotocol.io"
        assert official.interval == 7200.0

    @pytest.mark.parametrize(
        ("var", "said"),
        [
            ("SUBREGISTRY_API__PROT", "not a setting (did you mean SUBREGISTRY_API__PORT?)"),
            ("SUBREGISTRY_API_PORT", "not a setting"),
            ("SUBREGISTRY_NOPE__PORT", "not a setting"),
            ("SUBREGISTRY_FILTER__INCLUDE", "not a setting"),  # a list, not a scalar
            ("SUBREGISTRY_UPSTREAMS__OFFICIAL__HEADERS", "not a setting"),
            ("SUBREGISTRY_UPSTREAMS__OFFICIAL__INTERVALL", "not a setting"),
            ("SUBREGISTRY_UPSTREAMS__PRIVATE__INTERVAL", "no entry of [[upstreams]] is named"),
            ("SUBREGISTRY_", "not a setting"),
        ],
    )
    def test_an_unknown_variable_is_an_error_naming_it(self, var: str, said: str) -> None:
        message = _error(None, {var: "1"})
        assert f"\n  {var}: " in message and said in message

    def test_reserved_variables_are_not_settings(self, tmp_path: Path) -> None:
        path = _file(tmp_path, HTTP)
        env = {
            "SUBREGISTRY_CONFIG": str(path),
            "SUBREGISTRY_GIT_COMMIT": "abc123",  # reported by GET /v0.1/version
            "SUBREGISTRY_BUILD_TIME": "2026-01-01T00:00:00Z",
        }
        assert load_config(None, env=env).upstreams[0].url == "https://registry.example.org"

    def test_a_bad_value_names_the_key_and_the_variable(self) -> None:
        message = _error(None, {"SUBREGISTRY_API__PORT": "eighty"})
        assert "\n  api.port (from SUBREGISTRY_API__PORT): " in message
        message = _error(None, {"SUBREGISTRY_UPSTREAMS__OFFICIAL__RETRIES": "99"})
        assert "\n  upstreams[0].retries (from SUBREGISTRY_UPSTREAMS__OFFICIAL__RETRIES): " in (
            message
        )

    def test_names_that_read_alike_are_refused_not_guessed(self, tmp_path: Path) -> None:
        path = _file(
            tmp_path,
            '[[upstreams]]\nname = "a-b"\nurl = "https://a.example.org"\n'
            '[[upstreams]]\nname = "a_b"\nurl = "https://b.example.org"\n',
        )
        message = _error(path, {"SUBREGISTRY_UPSTREAMS__A_B__INTERVAL": "2h"})
        assert "'a-b' and 'a_b' both read as SUBREGISTRY_UPSTREAMS__A_B" in message
        # Without such a variable the file is fine.
        assert len(load_config(path, env={}).upstreams) == 2

    async def test_a_real_process_reads_the_environment(
        self, tmp_path: Path, fake_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = write_config(tmp_path, fake_url)
        elsewhere = tmp_path / "elsewhere.db"
        monkeypatch.setenv("SUBREGISTRY_STORAGE__PATH", str(elsewhere))
        code, _, err = await run("--config", config, "sync")
        assert code == 0, err
        assert elsewhere.exists() and not (tmp_path / "mirror.db").exists()
        monkeypatch.setenv("SUBREGISTRY_API__PROT", "9090")
        code, _, err = await run("--config", config, "status")
        assert code == 2
        assert err == (
            "subregistry: invalid configuration:\n"
            "  SUBREGISTRY_API__PROT: not a setting (did you mean SUBREGISTRY_API__PORT?)\n"
        )


class TestRelativePaths:
    def test_a_relative_path_in_a_file_means_the_files_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        folder = tmp_path / "etc" / "subregistry"
        path = _file(
            folder,
            '[storage]\npath = "db/mirror.db"\n'
            '[[upstreams]]\nname = "private"\npath = "../servers.json"\ninterval = "5s"\n',
        )
        monkeypatch.chdir(tmp_path)
        for given in (path, Path("etc/subregistry/c.toml")):
            config = load_config(given, env={})
            assert config.storage.path == folder / "db/mirror.db"
            assert config.upstreams[0].path == folder / "../servers.json"
        # The same from $SUBREGISTRY_CONFIG.
        config = load_config(None, env={"SUBREGISTRY_CONFIG": "etc/subregistry/c.toml"})
        assert config.storage.path == folder / "db/mirror.db"

    def test_secret_files_beside_the_configuration(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A token or proxy file named relatively is looked for beside the file too."""
        folder = tmp_path / "etc"
        (folder / "secrets").mkdir(parents=True)
        (folder / "secrets" / "token").write_text("t0ken\n")
        (folder / "secrets" / "proxy").write_text("http://user:pw@127.0.0.1:3128\n")
        path = _file(
            folder,
            '[[upstreams]]\nname = "official"\nurl = "https://registry.example.com"\n'
            'headers = { Authorization = { file = "secrets/token", prefix = "Bearer " } }\n'
            'proxy = { file = "secrets/proxy" }\n',
        )
        monkeypatch.chdir(tmp_path)
        [upstream] = load_config(path, env={}).upstreams
        assert upstream.headers["Authorization"].get_secret_value() == "Bearer t0ken"
        assert upstream.proxy is not None
        assert upstream.proxy.get_secret_value() == "http://user:pw@127.0.0.1:3128"

    def test_absolute_paths_stay_as_written(self, tmp_path: Path) -> None:
        path = _file(tmp_path / "conf", f'[storage]\npath = "{tmp_path / "x.db"}"\n')
        assert load_config(path, env={}).storage.path == tmp_path / "x.db"

    def test_the_environment_and_the_defaults_mean_the_working_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = _file(tmp_path / "conf", HTTP)
        monkeypatch.chdir(tmp_path)
        assert load_config(None, env={}).storage.path == Path("data/subregistry.db")
        # A file that does not set it keeps the default's meaning too.
        assert load_config(path, env={}).storage.path == Path("data/subregistry.db")
        config = load_config(path, env={"SUBREGISTRY_STORAGE__PATH": "var/m.db"})
        assert config.storage.path == tmp_path / "var/m.db"

    def test_every_path_typed_setting_is_resolved(self, tmp_path: Path) -> None:
        """A path setting added later needs nothing of its own: the rule is in the base."""

        class Later(Frozen):
            one: Path
            maybe: Path | None = None
            many: tuple[Path, ...] = ()
            text: str = "x.pem"

        data = {"one": "a.pem", "maybe": "b/c.pem", "many": ["d.pem", "/abs/e.pem"], "text": "t"}
        later = Later.model_validate(data, context={"base": tmp_path})
        assert later.one == tmp_path / "a.pem" and later.maybe == tmp_path / "b/c.pem"
        assert later.many == (tmp_path / "d.pem", Path("/abs/e.pem")) and later.text == "t"

    async def test_a_real_process_started_elsewhere(
        self, tmp_path: Path, fake_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        folder = tmp_path / "conf"
        path = _file(
            folder,
            f'[storage]\npath = "state/mirror.db"\n[logging]\nformat = "json"\n'
            f'[[upstreams]]\nname = "official"\nurl = "{fake_url}"\npage_delay = 0\n',
        )
        work = tmp_path / "work"
        work.mkdir()
        monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's code, from any folder
        monkeypatch.chdir(work)
        code, _, err = await run("--config", path, "sync")
        assert code == 0, err
        assert (folder / "state/mirror.db").exists()
        assert list(work.iterdir()) == []


class TestInterval:
    @pytest.mark.parametrize("interval", ["59", "59s", "PT59S", "0", "0.5m"])
    def test_http_upstreams_wait_at_least_a_minute(self, tmp_path: Path, interval: str) -> None:
        path = _file(tmp_path, f'{HTTP}interval = "{interval}"\n')
        message = _error(path, {})
        assert "\n  upstreams[0].interval: Value error, must be at least 60s (1m)" in message

    @pytest.mark.parametrize("interval", ["60", "1m", "PT1M", "pt1h", "P1D"])
    def test_a_minute_or_more_is_fine(self, tmp_path: Path, interval: str) -> None:
        path = _file(tmp_path, f'{HTTP}interval = "{interval}"\n')
        assert load_config(path, env={}).upstreams[0].interval >= 60

    def test_a_file_upstream_may_be_read_more_often(self, tmp_path: Path) -> None:
        file = '[[upstreams]]\nname = "private"\npath = "s.json"\n'
        path = _file(tmp_path, f'{file}interval = "5s"\n')
        assert load_config(path, env={}).upstreams[0].interval == 5.0
        path = _file(tmp_path, f'{file}interval = "0.5s"\n')
        assert "\n  upstreams[0].interval: Value error, must be at least 1s" in _error(path, {})

    def test_the_floor_holds_for_the_environment_too(self) -> None:
        message = _error(None, {"SUBREGISTRY_UPSTREAMS__OFFICIAL__INTERVAL": "30s"})
        assert (
            "\n  upstreams[0].interval (from SUBREGISTRY_UPSTREAMS__OFFICIAL__INTERVAL): "
            "Value error, must be at least 60s" in message
        )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1H", 3600.0),
        ("PT15M", 900.0),
        ("P1D", 86400.0),
        ("PT1H30M", 5400.0),
        ("PT0.5S", 0.5),
        ("pt1h30m", 5400.0),
        ("p1dt2h", 93600.0),
        ("P2W", 1209600.0),
        ("PT0,5S", 0.5),
        ("PT36H", 129600.0),
        (" PT1M ", 60.0),
    ],
)
def test_iso_8601_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["P", "PT", "P1DT", "PT1H30", "P1H", "PT1.5H30M", "PT-1H", "P1M", "P1Y", "P1Y2D", "PT1HX"],
)
def test_bad_iso_8601_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_months_and_years_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="years and months have no fixed length"):
        parse_duration("P1M")


@pytest.mark.parametrize("value", [math.inf, math.nan, "1e400", "inf", "nan"])
def test_a_duration_is_finite(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


def test_toml_infinity_is_no_interval(tmp_path: Path) -> None:
    path = _file(tmp_path, f"{HTTP}interval = inf\n")
    assert "\n  upstreams[0].interval: " in _error(path, {})


class TestCheck:
    @staticmethod
    def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}

    async def test_a_good_configuration_exits_0_without_touching_the_store(
        self, tmp_path: Path
    ) -> None:
        store = tmp_path / "state"
        path = _file(
            tmp_path,
            f'[storage]\npath = "state/mirror.db"\n{HTTP}'
            '[filter]\nexclude = ["io.github.spam/*"]\n[[enrich]]\nmatch = "a/*"\nmeta = {x = 1}\n',
        )
        code, out, err = await run("check", "--config", path)
        assert (code, err) == (0, "")
        assert out == (
            "configuration ok: 1 upstream (official: https://registry.example.org), 2 rules, "
            f"storage {store / 'mirror.db'}\n"
        )
        assert not store.exists()
        # An existing mirror: not a byte, not a timestamp, not a new file (no -wal, no lock).
        store.mkdir()
        (store / "mirror.db").write_bytes(b"not even SQLite")
        before = self._snapshot(tmp_path)
        code, _, _ = await run("--config", path, "check")
        assert code == 0 and self._snapshot(tmp_path) == before

    async def test_a_bad_configuration_exits_2_naming_the_key(self, tmp_path: Path) -> None:
        path = _file(tmp_path, f'[storage]\npath = "state/m.db"\n{HTTP}page_size = 500\n')
        code, out, err = await run("check", "--config", path)
        assert (code, out) == (2, "")
        assert err == (
            "subregistry: invalid configuration:\n"
            "  upstreams[0].page_size: Input should be less than or equal to 100\n"
        )
        assert not (tmp_path / "state").exists()

    async def test_online_probes_each_upstream_once(
        self, tmp_path: Path, fake: FakeRegistry, fake_url: str
    ) -> None:
        servers = tmp_path / "servers.json"
        servers.write_text(json.dumps([{"name": "com.example/a", "version": "1.0.0"}]))
        config = write_config(
            tmp_path,
            fake_url,
            f'[[upstreams]]\nname = "private"\npath = "{servers.name}"\ninterval = "5s"\n',
        )
        code, out, err = await run("--config", config, "check", "--online")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[1] == (f"official: ok: GET {fake_url}/v0.1/servers?limit=1: 1 entry")
        assert lines[2] == f"private: ok: {servers}: 1 entry"
        assert fake.requests == [{"limit": "1"}]
        assert TOKEN not in out + err
        assert not (tmp_path / "mirror.db").exists()

    async def test_online_reports_each_failure_and_exits_1(self, tmp_path: Path) -> None:
        denied = FakeRegistry([])
        denied.fail(401, "no")
        server = TestServer(denied.app())
        await server.start_server()
        try:
            url = str(server.make_url("")).rstrip("/")
            config = write_config(
                tmp_path,
                url,
                '[[upstreams]]\nname = "down"\nurl = "http://127.0.0.1:9"\n'
                '[[upstreams]]\nname = "private"\npath = "missing.json"\n',
            )
            code, out, err = await run("--config", config, "check", "--online")
        finally:
            await server.close()
        assert code == 1, err
        official, down, private = out.splitlines()[1:]
        assert official == "official: FAILED: HTTP 401 for /v0.1/servers"
        assert down.startswith("down: FAILED: Cannot connect to host 127.0.0.1:9")
        assert private == f"private: FAILED: cannot read {tmp_path / 'missing.json'}: " + (
            os.strerror(2)
        )
        assert denied.requests == [{"limit": "1"}]  # one request, no retry
