"""Baseline for the full-sync benchmark: the least a mirror can do with the same pages.

Fetch every page with aiohttp, follow the cursor, insert each item's raw JSON into one SQLite
table, one transaction per page. No validation, no served view, no checkpoint.
Usage: python bench/baseline_sync.py URL DB
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys

import aiohttp


async def main(url: str, path: str) -> int:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS raw (name TEXT, version TEXT, item TEXT, "
        "PRIMARY KEY (name, version))"
    )
    count = 0
    cursor = None
    async with aiohttp.ClientSession() as session:
        while True:
            params = {"limit": "100", "include_deleted": "true"}
            if cursor:
                params["cursor"] = cursor
            async with session.get(f"{url}/v0.1/servers", params=params) as response:
                page = await response.json()
            rows = [
                (i["server"]["name"], i["server"]["version"], json.dumps(i, separators=(",", ":")))
                for i in page["servers"]
            ]
            with db:
                db.executemany("INSERT OR REPLACE INTO raw VALUES (?, ?, ?)", rows)
            count += len(rows)
            cursor = page["metadata"].get("nextCursor")
            if not cursor:
                break
    db.close()
    return count


if __name__ == "__main__":
    print(asyncio.run(main(sys.argv[1], sys.argv[2])))
