"""One name with many versions against as many names: python bench/versions.py [--n 10000]

The baseline is the same number of versions spread over as many names, synced in the same
run through the same lean upstream and the real `subregistry sync` process. Target: the
one-name catalogue within 1.5x of the many-names one (a per-page rebuild of every stored
version of a name that spans many pages would make it grow with the square of its versions).
Both runs are repeated and the best kept, so a busy machine does not decide the figure.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import OUT, PY, free_port, measure_rss, wait_http, write_config  # noqa: E402

SOURCE = ROOT / "tests" / "data" / "registry-2025-12-12.json"
OFFICIAL = "io.modelcontextprotocol.registry/official"


def catalogue(n: int, one_name: bool) -> Path:
    """n versions of one server (1.0.0 .. 1.0.n-1), or n servers of one version each."""
    target = OUT / f"versions-{'one' if one_name else 'many'}-{n}.jsonl"
    if target.exists():
        return target
    items = json.loads(SOURCE.read_text(encoding="utf-8"))["servers"]
    template = next(i for i in items if i["server"]["name"] == "ai.exa/exa")
    OUT.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        for i in range(n):
            server = dict(template["server"])
            if one_name:
                server["name"], server["version"] = "io.github.bench/many", f"1.0.{i}"
            else:
                server["name"], server["version"] = f"io.github.bench/s{i:06d}", "1.0.0"
            stamp = f"2025-01-01T00:00:00.{i:06d}Z"
            official = {"status": "active", "publishedAt": stamp, "updatedAt": stamp}
            meta = {OFFICIAL: {**official, "isLatest": False}}
            out.write(json.dumps({"server": server, "_meta": meta}, separators=(",", ":")) + "\n")
    return target


def full_sync(source: Path, tag: str) -> float:
    """Seconds for a first full pass of `source` by a real `subregistry sync` process."""
    port = free_port()
    upstream = subprocess.Popen([PY, "bench/upstream.py", str(source), str(port)], cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/_admin/stats", timeout=120)
        db = OUT / f"versions-{tag}.db"
        for path in OUT.glob(f"versions-{tag}.db*"):
            path.unlink()
        config = write_config(OUT / f"versions-{tag}.toml", db, f"http://127.0.0.1:{port}", 0)
        wall, _, _, err = measure_rss([PY, "-m", "sync", "--config", str(config), "sync"])
        if '"outcome": "ok"' not in err:
            raise SystemExit(f"the {tag} sync failed:\n{err[-2000:]}")
        return wall
    finally:
        upstream.send_signal(signal.SIGTERM)
        upstream.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    many, one = catalogue(args.n, one_name=False), catalogue(args.n, one_name=True)
    base = min(full_sync(many, "many") for _ in range(args.repeat))
    wall = min(full_sync(one, "one") for _ in range(args.repeat))
    print(f"# {args.n} versions, best of {args.repeat}")
    print(f"baseline_many_names: {args.n / base:,.0f} versions/s, {base:.2f} s")
    print(
        f"one_name_many_versions: {args.n / wall:,.0f} versions/s, {wall:.2f} s "
        f"({wall / base:.2f}x the many-names time; target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
