"""Scale the real 2025-12-12 catalogue to N versions, streamed to a JSON-lines file.

Each copy clones every server under a new namespace (`io.github.x` → `io.github.x-c7`), so
every name keeps its real version history (up to 72 versions) and its real entry sizes.
Usage: python bench/catalogue.py 250000 bench/out/catalogue-250000.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SOURCE = Path(__file__).parent.parent / "tests" / "data" / "registry-2025-12-12.json"


def generate(n: int, target: Path) -> Path:
    if target.exists():
        return target
    items = json.loads(SOURCE.read_text(encoding="utf-8"))["servers"]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    written = 0
    with partial.open("w", encoding="utf-8") as out:
        copy = 0
        while written < n:
            for item in items:
                if written >= n:
                    break
                server = dict(item["server"])
                namespace, _, rest = server["name"].partition("/")
                if copy:
                    server["name"] = f"{namespace}-c{copy}/{rest}"
                out.write(
                    json.dumps({"server": server, "_meta": item["_meta"]}, separators=(",", ":"))
                    + "\n"
                )
                written += 1
            copy += 1
    partial.rename(target)
    return target


if __name__ == "__main__":
    print(generate(int(sys.argv[1]), Path(sys.argv[2])))
