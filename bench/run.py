"""Every benchmark, one command: python bench/run.py [--versions N] [--seconds S]

Prints one line per figure with its ratio to a baseline measured in the same run, and writes
bench/out/results.json. Needs wrk (Debian package `wrk`) for the API figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

from bench.catalogue import generate  # noqa: E402

PY = sys.executable
RESULTS: dict[str, Any] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def measure_rss(cmd: list[str]) -> tuple[float, float, str, str]:
    """Run to completion; return (wall seconds, peak RSS MB of that process, stdout, stderr)."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []

    # Read both pipes while waiting so the child never blocks on a full pipe.
    def drain(stream: Any, into: list[bytes]) -> None:
        for chunk in iter(lambda: stream.read(65536), b""):
            into.append(chunk)

    threads = [
        threading.Thread(target=drain, args=(process.stdout, out_chunks)),
        threading.Thread(target=drain, args=(process.stderr, err_chunks)),
    ]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(process.pid, 0)
    for t in threads:
        t.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    out, err = b"".join(out_chunks).decode(), b"".join(err_chunks).decode()
    if process.returncode != 0:
        raise SystemExit(f"{cmd} failed ({process.returncode}):\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out, err


def wait_http(url: str, timeout: float = 60.0, status: int = 200) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
                if response.status == status:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"{url} not answering {status} after {timeout}s")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def post(url: str) -> None:
    request = urllib.request.Request(url, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=30):  # noqa: S310
        pass


def report(key: str, text: str, **values: Any) -> None:
    RESULTS[key] = values
    print(f"{key}: {text}", flush=True)


def write_config(path: Path, db: Path, upstream: str, port: int, extra: str = "") -> Path:
    path.write_text(
        f'[storage]\npath = "{db}"\n[logging]\nformat = "json"\nlevel = "info"\n'
        f"[api]\nport = {port}\n"
        f'[[upstreams]]\nname = "bench"\nurl = "{upstream}"\npage_delay = 0\nretries = 2\n'
        f'interval = "1h"\n{extra}'
    )
    return path


def summary_event(stderr: str) -> dict[str, Any]:
    for line in reversed(stderr.splitlines()):
        if '"sync.finished"' in line:
            event: dict[str, Any] = json.loads(line)
            return event
    raise SystemExit("no sync.finished event in the output")


WRK_SCRIPT = """
local urls = {}
for line in io.lines("%s") do urls[#urls + 1] = line end
local i = 0
request = function()
  i = i + 1
  if i > #urls then i = 1 end
  return wrk.format("GET", urls[i])
end
"""


def wrk(base: str, urls: list[str], seconds: int, name: str) -> dict[str, float]:
    listing = OUT / f"urls-{name}.txt"
    listing.write_text("\n".join(urls) + "\n")
    script = OUT / f"wrk-{name}.lua"
    script.write_text(WRK_SCRIPT % listing)
    result = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    )
    text = result.stdout

    def latency(pct: str) -> float:
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if match is None:
            raise SystemExit(f"no {pct}% latency in wrk output:\n{text}")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "rps": rps,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=250_000)
    parser.add_argument("--seconds", type=int, default=10, help="per wrk scenario")
    parser.add_argument("--only", choices=("sync", "api"), help="run one half")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    catalogue = generate(args.versions, OUT / f"catalogue-{args.versions}.jsonl")
    print(
        f"# {args.versions} versions, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}",
        flush=True,
    )

    up_port = free_port()
    upstream = subprocess.Popen([PY, "bench/upstream.py", str(catalogue), str(up_port)], cwd=ROOT)
    up = f"http://127.0.0.1:{up_port}"
    processes = [upstream]
    try:
        wait_http(f"{up}/_admin/stats", timeout=300)
        if args.only != "api":
            run_sync_benchmarks(up, args)
        if args.only != "sync":
            run_api_benchmarks(up, args)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    results = OUT / "results.json"
    previous = json.loads(results.read_text()) if results.exists() and args.only else {}
    results.write_text(json.dumps({**previous, **RESULTS}, indent=2))


def run_sync_benchmarks(up: str, args: argparse.Namespace) -> None:
    n = args.versions
    base_db = OUT / "baseline.db"
    for path in OUT.glob("baseline.db*"):
        path.unlink()
    wall, rss, _, _ = measure_rss([PY, "bench/baseline_sync.py", up, str(base_db)])
    base_rate = n / wall
    report(
        "baseline_full_sync",
        f"{base_rate:,.0f} versions/s, {wall:.1f} s, peak RSS {rss:.0f} MB",
        rate=base_rate,
        wall=wall,
        rss_mb=rss,
    )

    db = OUT / "mirror.db"
    for path in OUT.glob("mirror.db*"):
        path.unlink()
    config = write_config(OUT / "bench.toml", db, up, free_port())
    wall, rss, out, err = measure_rss([PY, "-m", "sync", "--config", str(config), "sync", "--full"])
    rate = n / wall
    report(
        "full_sync",
        f"{rate:,.0f} versions/s ({rate / base_rate:.2f}x baseline; target "
        f">= 0.7x), {wall:.1f} s, peak RSS {rss:.0f} MB (target < 200 MB)",
        rate=rate,
        ratio=rate / base_rate,
        wall=wall,
        rss_mb=rss,
    )

    post(f"{up}/_admin/touch?n=10")
    before = get_json(f"{up}/_admin/stats")["requests"]
    wall, _, out, err = measure_rss([PY, "-m", "sync", "--config", str(config), "sync"])
    requests = get_json(f"{up}/_admin/stats")["requests"] - before
    event = summary_event(err)
    report(
        "incremental_sync",
        f"{event['duration_s']:.3f} s pass ({wall:.2f} s process), "
        f"{requests} upstream request(s), {event['updated']} updated (target: 1 request, "
        f"< 0.5 s)",
        pass_s=event["duration_s"],
        process_s=wall,
        requests=requests,
        updated=event["updated"],
    )

    before = get_json(f"{up}/_admin/stats")["requests"]
    changed = write_config(
        OUT / "bench-rules.toml",
        db,
        up,
        free_port(),
        '[filter]\nexclude_regex = ["(?i)test"]\n'
        '[[enrich]]\nmatch = "io.github.*"\nmeta = { tier = "public" }\n',
    )
    wall, rss, out, _ = measure_rss([PY, "-m", "sync", "--config", str(changed), "reapply"])
    requests = get_json(f"{up}/_admin/stats")["requests"] - before
    report(
        "reapply",
        f"{wall:.1f} s, {requests} upstream requests, peak RSS {rss:.0f} MB "
        f"({out.strip()}; target < 20 s, 0 requests)",
        wall=wall,
        requests=requests,
        rss_mb=rss,
    )
    # back to the plain rules for the API figures
    measure_rss([PY, "-m", "sync", "--config", str(config), "reapply"])


def run_api_benchmarks(up: str, args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        print("api: skipped (install wrk: apt-get install wrk)")
        return
    db = OUT / "mirror.db"
    port = free_port()
    config = write_config(OUT / "bench-api.toml", db, up, port)
    if not db.exists():
        measure_rss([PY, "-m", "sync", "--config", str(config), "sync", "--full"])
    server = subprocess.Popen(
        [PY, "-m", "sync", "--config", str(config), "serve", "--no-sync"],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/v0.1/health")
        pages = ["/v0.1/servers?limit=100"]
        cursor = None
        first_body = b""
        for _ in range(300):
            url = "/v0.1/servers?limit=100" + (f"&cursor={cursor}" if cursor else "")
            with urllib.request.urlopen(base + url) as response:  # noqa: S310
                body = response.read()
            first_body = first_body or body
            pages.append(url)
            cursor = json.loads(body)["metadata"].get("nextCursor")
            if not cursor:
                break
        names = [
            json.loads(line)["server"]["name"]
            for line in (OUT / f"catalogue-{args.versions}.jsonl").open()
            if random.random() < 0.01
        ]
        terms = sorted({n.split("/")[-1][:6] for n in names if len(n.split("/")[-1]) >= 6})
        latest = [f"/v0.1/servers/{n.replace('/', '%2F')}/versions/latest" for n in names]
        searches = [f"/v0.1/servers?search={t}&limit=30" for t in terms[:500]]

        body_file = OUT / "baseline-body.json"
        body_file.write_bytes(first_body)
        bport = free_port()
        bare = subprocess.Popen([PY, "bench/baseline_api.py", str(body_file), str(bport)], cwd=ROOT)
        try:
            wait_http(f"http://127.0.0.1:{bport}/x")
            baseline = wrk(f"http://127.0.0.1:{bport}", pages, args.seconds, "baseline")
        finally:
            bare.terminate()
            bare.wait()
        report(
            "api_baseline",
            f"{baseline['rps']:,.0f} req/s, p50 {baseline['p50_ms']:.2f} ms, "
            f"p99 {baseline['p99_ms']:.2f} ms ({len(first_body):,} bytes)",
            **baseline,
        )
        for name, urls in (
            ("list", pages),
            ("search", searches),
            ("latest", latest),
            ("list_uncached", pages),
            ("search_uncached", searches),
        ):
            if name == "list_uncached":
                # Restart without the response cache: every request reaches SQLite.
                server.terminate()
                server.wait()
                uncached = write_config(OUT / "bench-api-nocache.toml", db, up, port)
                uncached.write_text(
                    uncached.read_text().replace("[api]\n", "[api]\ncache_mb = 0\n")
                )
                server = subprocess.Popen(
                    [PY, "-m", "sync", "--config", str(uncached), "serve", "--no-sync"],
                    cwd=ROOT,
                    stderr=subprocess.DEVNULL,
                )
                wait_http(f"{base}/v0.1/health")
            figures = wrk(base, urls, args.seconds, name)
            report(
                f"api_{name}",
                f"{figures['rps']:,.0f} req/s "
                f"({figures['rps'] / baseline['rps']:.2f}x baseline), p50 "
                f"{figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms "
                f"(target p99 < 25 ms), non-2xx {figures['non_2xx']:.0f}",
                **figures,
            )
        writer = subprocess.Popen(
            [PY, "-m", "sync", "--config", str(config), "sync", "--full"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            figures = wrk(base, pages, args.seconds, "list-while-syncing")
        finally:
            writer.terminate()
            writer.wait()
        report(
            "api_list_while_syncing",
            f"{figures['rps']:,.0f} req/s, p50 "
            f"{figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms (target p99 < 50 ms)"
            f", non-2xx {figures['non_2xx']:.0f}",
            **figures,
        )
    finally:
        server.terminate()
        server.wait()

    port = free_port()
    config = write_config(OUT / "bench-cold.toml", db, up, port)
    started = time.perf_counter()
    cold = subprocess.Popen(
        [PY, "-m", "sync", "--config", str(config), "serve"], cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
        ready = time.perf_counter() - started
    finally:
        cold.send_signal(signal.SIGTERM)
        cold.wait(timeout=60)
    report("cold_start", f"{ready:.2f} s to the first 200 on /readyz (target < 2 s)", seconds=ready)


if __name__ == "__main__":
    main()
