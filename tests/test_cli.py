"""The `subregistry` command as operators run it: a real process against a fake registry."""

from __future__ import annotations

import json
from pathlib import Path

from sync.store import Store
from tests.cli_helpers import TOKEN, run, write_config


class TestSync:
    async def test_sync_status_export(self, tmp_path: Path, fake_url: str) -> None:
        config = write_config(tmp_path, fake_url)
        code, out, err = await run("--config", config, "sync")
        assert code == 0, err
        assert out.startswith("official: ok full pass") and "2628 inserted" in out
        events = [json.loads(line) for line in err.splitlines()]
        summary = [e for e in events if e["event"] == "sync.finished"]
        assert summary[0]["inserted"] == 2628 and summary[0]["upstream"] == "official"

        code, out, err = await run("--config", config, "status", "--json")
        assert code == 0, err
        [upstream] = json.loads(out)["upstreams"]
        assert upstream["versions_held"] == 2628 and upstream["last_success"]
        assert upstream["headers"] == {"Authorization": "***"}
        assert upstream["recent_passes"][0]["inserted"] == 2628

        code, out, _ = await run("--config", config, "status")
        assert "versions held:   2628" in out

        target = tmp_path / "export.json"
        code, _, err = await run("--config", config, "export", "--output", target)
        assert code == 0, err
        exported = json.loads(target.read_text())
        assert exported["metadata"] == {"count": 2628}
        assert len(exported["servers"]) == 2628
        assert TOKEN not in (tmp_path / "export.json").read_text()

    async def test_failing_upstream_exits_1(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "http://127.0.0.1:9")
        code, out, err = await run("--config", config, "sync")
        assert code == 1
        assert out.startswith("official: failed")
        assert TOKEN not in out + err

    async def test_bad_configuration_exits_2_naming_the_key(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "http://127.0.0.1:9", "colour = 'blue'\n")
        code, _, err = await run("--config", config, "sync")
        assert code == 2 and "upstreams[0].colour" in err

    async def test_unknown_upstream_and_usage_exit_2(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "http://127.0.0.1:9")
        code, _, err = await run("--config", config, "sync", "--upstream", "nope")
        assert code == 2 and "no upstream named 'nope'" in err
        code, _, _ = await run("--config", config, "frobnicate")
        assert code == 2

    async def test_second_writer_is_refused(self, tmp_path: Path, fake_url: str) -> None:
        config = write_config(tmp_path, fake_url)
        holder = await Store.open(tmp_path / "mirror.db")
        try:
            code, _, err = await run("--config", config, "sync")
        finally:
            await holder.close()
        assert code == 1 and "in use by another subregistry process" in err
