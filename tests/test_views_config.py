"""`[[views]]` and read authentication in the configuration: what is accepted, what is refused
(exit 2, the key named), and bearer tokens read again whenever the file is loaded again."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.config import DEFAULT_VIEW, Config, config_from_mapping, load_config
from sync.errors import ConfigError
from tests.cli_helpers import run

ISSUER = "https://id.example.com"


def _view(**extra: object) -> dict[str, object]:
    return {"name": "payments", "base_path": "/teams/payments", **extra}


class TestViews:
    def test_a_view_is_named_and_placed(self) -> None:
        config = config_from_mapping(
            {
                "views": [
                    _view(base_path="/teams/payments/", filter={"include": ["io.github.acme/*"]}),
                    {"name": "data", "base_path": "/data", "enrich": [{"match": "*", "meta": {}}]},
                ]
            }
        )
        payments, data = config.views
        assert payments.base_path == "/teams/payments"  # a trailing slash means the same place
        assert payments.filter.include == ("io.github.acme/*",)
        assert config.view("data") is data and config.view(DEFAULT_VIEW) is None
        assert config.view_names() == "default, payments, data"
        with pytest.raises(ConfigError, match="no view named 'nope'"):
            config.view("nope")

    @pytest.mark.parametrize(
        ("views", "api", "key", "message"),
        [
            ([{"name": "default", "base_path": "/x"}], {}, "views[0].name", "mirror's own view"),
            ([{"name": "Pay Ments", "base_path": "/x"}], {}, "views[0].name", "pattern"),
            ([{"name": "a"}], {}, "views[0].base_path", "Field required"),
            ([{"name": "a", "base_path": ""}], {}, "views[0].base_path", "such as"),
            ([{"name": "a", "base_path": "x"}], {}, "views[0].base_path", "such as"),
            ([{"name": "a", "base_path": "/a b"}], {}, "views[0].base_path", "such as"),
            ([{"name": "a", "base_path": "/t/v0.1"}], {}, "views[0].base_path", "'v0.1'"),
            ([{"name": "a", "base_path": "/v0"}], {}, "views[0].base_path", "'v0'"),
            ([{"name": "a", "base_path": "/.well-known"}], {}, "views[0].base_path", "segment"),
            (
                [{"name": "a", "base_path": "/x"}, {"name": "a", "base_path": "/y"}],
                {},
                "views",
                "repeated: a",
            ),
            (
                [{"name": "a", "base_path": "/x"}, {"name": "b", "base_path": "/x/"}],
                {},
                "views",
                "shared: /x",
            ),
            ([{"name": "a", "base_path": "/reg"}], {"base_path": "/reg"}, "views", "shared"),
            ([{"name": "a", "base_path": "/x", "colour": 1}], {}, "views[0].colour", "Extra"),
            (
                [{"name": "a", "base_path": "/x", "filter": {"include": ["[a"]}}],
                {},
                "views[0].filter.include",
                "invalid glob",
            ),
        ],
    )
    def test_bad_views_name_the_key(
        self, views: list[object], api: dict[str, object], key: str, message: str
    ) -> None:
        with pytest.raises(ConfigError) as caught:
            config_from_mapping({"views": views, "api": api})
        assert f"{key}:" in str(caught.value) and message in str(caught.value)


def test_env_overrides_a_view(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[views]]\nname = "data-platform"\nbase_path = "/data"\n')
    env = {"SUBREGISTRY_VIEWS__DATA_PLATFORM__BASE_PATH": "/teams/data"}
    assert load_config(path, env=env).views[0].base_path == "/teams/data"
    with pytest.raises(ConfigError, match="no entry of \\[\\[views\\]\\] is named 'nope'"):
        load_config(path, env={"SUBREGISTRY_VIEWS__NOPE__BASE_PATH": "/x"})


class TestAuth:
    def test_the_default_is_open(self) -> None:
        config = Config()
        assert config.api.auth.type == "none" and not config.api.auth.enabled

    def test_bearer_tokens_come_from_a_file_and_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "tokens").write_text("# team tokens\n  alpha  \n\nbeta\nalpha\n")
        monkeypatch.setenv("MORE_TOKENS", "gamma\n")
        path = tmp_path / "c.toml"
        path.write_text(
            '[[views]]\nname = "p"\nbase_path = "/p"\n'
            '[views.auth]\ntype = "bearer"\ntokens_file = "tokens"\ntokens_env = "MORE_TOKENS"\n'
        )
        auth = load_config(path, env={}).views[0].auth
        assert [t.get_secret_value() for t in auth.tokens] == ["alpha", "beta", "gamma"]
        assert auth.tokens_file == tmp_path / "tokens"  # beside the file, like every path
        assert "alpha" not in repr(auth) and "alpha" not in str(auth.model_dump())

    def test_loading_again_reads_the_tokens_again(self, tmp_path: Path) -> None:
        """A reload is a new load: a rotated Secret is in force, and the two configurations
        differ, so the daemon sees that something changed."""
        tokens = tmp_path / "tokens"
        tokens.write_text("old\n")
        path = tmp_path / "c.toml"
        path.write_text(f'[api.auth]\ntype = "bearer"\ntokens_file = "{tokens}"\n')
        before = load_config(path, env={})
        tokens.write_text("new\n")
        after = load_config(path, env={})
        assert [t.get_secret_value() for t in after.api.auth.tokens] == ["new"]
        assert before != after
        assert load_config(path, env={}) == after

    @pytest.mark.parametrize(
        ("auth", "message"),
        [
            ({"type": "bearer"}, "at least one token"),
            ({"type": "bearer", "tokens_file": "/nonexistent/t"}, "cannot read tokens_file"),
            ({"type": "bearer", "tokens_env": "SUBREGISTRY_TEST_UNSET"}, "is not set"),
            ({"type": "oidc", "issuer": ISSUER}, "needs 'issuer' and 'audience'"),
            ({"type": "oidc", "issuer": "http://id.example.com", "audience": "a"}, "https"),
            ({"type": "oidc", "issuer": "ftp://x", "audience": "a"}, "https"),
            (
                {"type": "oidc", "issuer": ISSUER, "audience": "a", "algorithms": ["HS256"]},
                "'HS256' is not allowed",
            ),
            (
                {"type": "oidc", "issuer": ISSUER, "audience": "a", "algorithms": ["none"]},
                "'none' is not allowed",
            ),
            ({"type": "oidc", "issuer": ISSUER, "audience": "a", "algorithms": []}, "at least"),
            ({"type": "none", "issuer": ISSUER}, "'issuer' does not apply to type 'none'"),
            ({"type": "oidc", "issuer": ISSUER, "audience": "a", "tokens_env": "X"}, "apply"),
            ({"type": "basic"}, "'none', 'bearer' or 'oidc'"),
            ({"type": "oidc", "issuer": ISSUER, "audience": "a", "leeway": "1h"}, "leeway"),
        ],
    )
    def test_bad_auth_names_the_key(self, auth: dict[str, object], message: str) -> None:
        for data, key in (
            ({"api": {"auth": auth}}, "api.auth"),
            ({"views": [_view(auth=auth)]}, "views[0].auth"),
        ):
            with pytest.raises(ConfigError) as caught:
                config_from_mapping(data)
            text = str(caught.value)
            assert key in text and message in text, text

    @pytest.mark.parametrize(
        "line",
        [
            "sek rit",
            "sek\u00f6rit",
            'sek"rit',
            "sek=rit",
            "=sekrit",
            "sek;rit",
            "sek,rit",
            "sek\trit",
            "sek\x1crit",
            "sek\u2028rit",
        ],
    )
    def test_a_token_no_client_could_send_is_refused_naming_its_source(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str
    ) -> None:
        """RFC 6750's b64token is all an Authorization header can carry: a line outside it
        would load and never match. The error names the file or variable and the line,
        never the token (a secret with a typo is still a secret)."""
        tokens = tmp_path / "tokens"
        tokens.write_text(f"# ok\ngood-token\n{line}\n", encoding="utf-8")
        monkeypatch.setenv("SUBREGISTRY_TEST_TOKENS", f"good-token\n{line}")
        for auth, source in (
            ({"tokens_file": str(tokens)}, f"tokens_file {tokens}, line 3"),
            (
                {"tokens_env": "SUBREGISTRY_TEST_TOKENS"},
                "tokens_env SUBREGISTRY_TEST_TOKENS, line 2",
            ),
        ):
            with pytest.raises(ConfigError) as caught:
                config_from_mapping({"views": [_view(auth={"type": "bearer", **auth})]})
            text = str(caught.value)
            assert "views[0].auth" in text and source in text and "RFC 6750" in text, text
            assert "sek" not in text

    def test_every_b64token_is_accepted(self, tmp_path: Path) -> None:
        tokens = tmp_path / "tokens"
        accepted = ["abc", "A-Z.0_9~+/", "padded==", "x="]
        tokens.write_text("\n".join(accepted) + "\n")
        auth = {"type": "bearer", "tokens_file": str(tokens)}
        loaded = config_from_mapping({"api": {"auth": auth}}).api.auth.tokens
        assert [t.get_secret_value() for t in loaded] == accepted

    def test_a_loopback_issuer_may_be_plain_http(self) -> None:
        for issuer in ("http://127.0.0.1:8443", "http://localhost:9", "http://[::1]:9"):
            auth = {"type": "oidc", "issuer": issuer, "audience": "registry"}
            assert config_from_mapping({"api": {"auth": auth}}).api.auth.issuer == issuer

    def test_public_url_is_an_origin(self) -> None:
        config = config_from_mapping({"api": {"public_url": "https://reg.example.com/"}})
        assert config.api.public_url == "https://reg.example.com"
        with pytest.raises(ConfigError, match="api.public_url"):
            config_from_mapping({"api": {"public_url": "https://reg.example.com/path"}})


async def test_a_malformed_token_stops_the_command_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("sekrit value\n")
    path = tmp_path / "c.toml"
    path.write_text(
        '[[upstreams]]\nname = "local"\npath = "servers.json"\n'
        '[api.auth]\ntype = "bearer"\ntokens_file = "tokens"\n'
    )
    code, out, err = await run("--config", path, "status")
    assert code == 2 and out == ""
    assert err.startswith("subregistry: invalid configuration"), err
    assert "api.auth" in err and "line 1" in err and "sekrit" not in err
    assert "Traceback" not in err


async def test_a_bad_view_stops_the_command_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[upstreams]]\nname = "local"\npath = "servers.json"\n'
        '[[views]]\nname = "p"\nbase_path = "/p"\n[views.auth]\ntype = "bearer"\n'
        'tokens_file = "missing-tokens"\n'
    )
    code, out, err = await run("--config", path, "status")
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()[:1]
    assert line.startswith("subregistry: invalid configuration")
    assert "views[0].auth" in err and "missing-tokens" in err and "Traceback" not in err
