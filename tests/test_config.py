"""Configuration: defaults, TOML, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.config import Config, load_config, parse_duration
from sync.errors import ConfigError

ROOT = Path(__file__).parent.parent


class TestLoading:
    def test_defaults_mirror_the_official_registry(self) -> None:
        config = load_config(None, env={})
        [upstream] = config.upstreams
        assert upstream.url == "https://registry.modelcontextprotocol.io"
        assert config.storage.path == Path("data/subregistry.db")

    def test_environment_names_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "c.toml"
        path.write_text('[[upstreams]]\nname = "x"\nurl = "http://127.0.0.1:1"\ninterval = "15m"\n')
        config = load_config(None, env={"SUBREGISTRY_CONFIG": str(path)})
        assert config.upstreams[0].interval == 900

    @pytest.mark.parametrize("name", ["example.toml", "default.toml", "curated.toml"])
    def test_shipped_configs_load(self, name: str) -> None:
        assert isinstance(load_config(ROOT / "config" / name, env={}), Config)

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ("[storage]\npaht = 'x'\n", "storage.paht"),
            ("[[upstreams]]\nname = 'Bad Name'\nurl = 'https://x.org'\n", "upstreams[0].name"),
            (
                "[[upstreams]]\nname = 'a'\nurl = 'https://x.org'\npage_size = 500\n",
                "upstreams[0].page_size",
            ),
            (
                "[[upstreams]]\nname = 'a'\nurl = 'https://x.org'\ninterval = 'soon'\n",
                "upstreams[0].interval",
            ),
            ("[[upstreams]]\nname = 'a'\n", "upstreams[0]"),
            ("[filter]\nexclude_regex = ['(unclosed']\n", "filter.exclude_regex"),
            ("[filter]\nstatuses = ['gone']\n", "filter.statuses[0]"),
            ("[filter]\ninclude = ['io.github.[abc']\n", "filter.include"),
            ("[[enrich]]\nmatch = 'a/*'\n", "enrich[0].meta"),
            ("[[override]]\nname = 'a/b'\nstatus = 'banned'\n", "override[0].status"),
            ("[api]\nport = 'eighty'\n", "api.port"),
            (
                "[[upstreams]]\nname='a'\nurl='https://x.org'\n[[upstreams]]\nname='a'\npath='f'\n",
                "upstreams",
            ),
        ],
    )
    def test_bad_values_name_the_key(self, tmp_path: Path, text: str, key: str) -> None:
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            load_config(path, env={})
        assert f"\n  {key}: " in str(error.value)

    def test_unreadable_toml(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.toml"
        path.write_text("[storage\n")
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        ("90", 90.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        (0.5, 0.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "15x", "m", True, ""])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="invalid duration|expected seconds"):
        parse_duration(text)
