"""Reading pages of every shape the registry has served, without losing a byte."""

from __future__ import annotations

import json

import pytest

from sync.pull.wire import MalformedPage, parse_page
from tests.conftest import DATA


class TestShapes:
    def test_current_envelope_keeps_raw_text(self) -> None:
        body = (
            '{"servers":[{"server":{"name":"io.github.a/b","version":"1.0.0",'
            '"description":"x \\u0026 y","future":{"n":1.50}},'
            '"_meta":{"io.modelcontextprotocol.registry/official":{"status":"active",'
            '"publishedAt":"2025-10-09T17:05:17.793Z","updatedAt":"2025-10-09T17:05:17.793Z",'
            '"isLatest":true},"com.other/x":{"k":1}}}],'
            '"metadata":{"nextCursor":"io.github.a/b:1.0.0","count":1}}'
        )
        page = parse_page(body)
        [entry] = page.entries
        assert entry.server == (
            '{"name":"io.github.a/b","version":"1.0.0","description":"x \\u0026 y",'
            '"future":{"n":1.50}}'
        )
        assert entry.description == "x & y"
        assert entry.published_at == "2025-10-09T17:05:17.793Z"
        assert entry.meta is not None and '"com.other/x"' in entry.meta
        assert page.next_cursor == "io.github.a/b:1.0.0"

    def test_flat_2025_07_envelope_with_snake_case(self) -> None:
        body = json.dumps(
            {
                "servers": [
                    {
                        "name": "io.github.old/shape",
                        "version": "0.1.0",
                        "description": "old",
                        "_meta": {
                            "io.modelcontextprotocol.registry/official": {
                                "id": "x",
                                "published_at": "2025-07-09T00:00:00Z",
                                "updated_at": "2025-07-10T00:00:00Z",
                                "is_latest": True,
                            }
                        },
                    }
                ],
                "metadata": {"next_cursor": "abc"},
            }
        )
        page = parse_page(body)
        [entry] = page.entries
        assert (entry.name, entry.published_at, entry.updated_at) == (
            "io.github.old/shape",
            "2025-07-09T00:00:00Z",
            "2025-07-10T00:00:00Z",
        )
        assert entry.meta is None and page.next_cursor == "abc"

    def test_seed_file_bare_list_of_server_json(self) -> None:
        page = parse_page((DATA / "seed-2025-09-29.json").read_text(encoding="utf-8"))
        assert len(page.entries) == 358 and not page.rejected
        assert all(e.status == "active" and e.published_at is None for e in page.entries)

    def test_byte_order_mark_is_skipped(self) -> None:
        body = '\ufeff[{"server":{"name":"io.github.a/b","version":"1"}}]'
        assert parse_page(body).entries[0].name == "io.github.a/b"

    def test_examples_valid_and_invalid(self) -> None:
        valid = [json.loads(p.read_text()) for p in sorted((DATA / "examples/valid").iterdir())]
        assert len(parse_page(json.dumps(valid)).entries) == len(valid)
        missing = (DATA / "examples/invalid/missing-name.json").read_text()
        bad = (DATA / "examples/invalid/bad-name-pattern.json").read_text()
        page = parse_page(f"[{missing},{bad}]")
        assert not page.entries
        assert [r.reason.split(" ")[0] for r in page.rejected] == ["missing", "name"]


class TestBadBodies:
    @pytest.mark.parametrize(
        "body",
        [
            "<html><body>502 Bad Gateway</body></html>",
            '{"servers":[{"server":{"name":"io.github.a/b"',
            '{"error":"oops"}',
            '{"servers":[]} trailing',
            "",
        ],
    )
    def test_unreadable_pages_are_malformed(self, body: str) -> None:
        with pytest.raises(MalformedPage):
            parse_page(body)

    def test_bad_entries_are_rejected_with_reasons(self) -> None:
        body = json.dumps(
            {
                "servers": [
                    1,
                    {"server": "nope"},
                    {"server": {"name": "io.github.a/b", "version": "1", "description": 5}},
                    {"server": {"name": "io.github.a/b", "version": "x" * 300}},
                    {
                        "server": {"name": "io.github.a/ok", "version": "1"},
                        "_meta": {
                            "io.modelcontextprotocol.registry/official": {
                                "publishedAt": "yesterday"
                            }
                        },
                    },
                    {
                        "server": {
                            "name": "io.github.a/big",
                            "version": "1",
                            "description": "y" * 5000,
                        }
                    },
                    {"server": {"name": "io.github.a/fine", "version": "1"}},
                ]
            }
        )
        page = parse_page(body, max_entry_chars=2000)
        assert [e.name for e in page.entries] == ["io.github.a/fine"]
        reasons = [r.reason for r in page.rejected]
        assert reasons[0] == "entry is not a JSON object"
        assert reasons[1] == "'server' is not a JSON object"
        assert reasons[2] == "'description' is not a string"
        assert reasons[3] == "version is longer than 255 characters"
        assert reasons[4].startswith("official 'publishedAt' is not an RFC 3339 timestamp")
        assert "over the 2000 cap" in reasons[5]
        assert page.rejected[2].key == "io.github.a/b@1"
        assert page.rejected[0].key.startswith("sha256:")
