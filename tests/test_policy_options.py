"""`policy export` options that only VS Code's policy uses: given to another format, or with a
URL no client can use, they are one `subregistry:` line before the store is opened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import run


def _config(tmp_path: Path, public_url: str | None = None) -> Path:
    # No mirror file: a refused option must fail before the store is opened.
    api = f'[api]\npublic_url = "{public_url}"\n' if public_url else ""
    path = tmp_path / "c.toml"
    path.write_text(f'{api}[storage]\npath = "{tmp_path / "m.db"}"\n', encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "github", "--registry-url", "https://r.example.com"], "--registry-url"),
        (["--format", "kiro", "--registry-only"], "--registry-only"),
        (["--format", "vscode", "--registry-url", "not a url"], "is not a registry base URL"),
        (["--format", "vscode", "--registry-url", "ftp://r.example.com"], "is not a registry"),
        (["--format", "vscode", "--registry-url", "https://r.example.com/?x=1"], "is not a"),
        (["--format", "vscode", "--registry-url", "https://r.example.com:99999"], "is not a"),
    ],
)
async def test_registry_options_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    code, out, err = await run("--config", _config(tmp_path), "policy", "export", *args)
    assert code == 1 and out == ""
    assert err.startswith("subregistry: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "m.db").exists()


async def test_the_registry_url_reaches_the_vscode_policy(tmp_path: Path, fake_url: str) -> None:
    from tests.cli_helpers import write_config  # noqa: PLC0415

    config = write_config(tmp_path, fake_url)
    code, _, err = await run("--config", config, "sync")
    assert code == 0, err
    url = "https://registry.example.com/teams/payments"
    code, out, err = await run(
        "--config",
        config,
        "policy",
        "export",
        "--format",
        "vscode",
        "--registry-url",
        url,
        "--registry-only",
    )
    assert code == 0, err
    policy = json.loads(out)
    assert policy["McpGalleryServiceUrl"] == url and policy["ChatMCP"] == "registry"
