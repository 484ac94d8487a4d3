"""Every file in deploy/ is checked by what can run here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sync.config import config_from_mapping
from sync.metrics import Metrics
from sync.server import FD_RESERVE

DEPLOY = Path(__file__).parent.parent / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*.y*ml"))
BIN = Path(sys.executable).parent


def exported_series() -> set[str]:
    """Every sample name the daemon can export, with its histogram and counter suffixes."""
    metrics = Metrics()
    for name in ("served_versions", "quarantined"):
        getattr(metrics, name).labels("x").set(0)
    for name in ("sync_runs",):
        getattr(metrics, name).labels("a", "b", "c").inc(0)
    metrics.sync_duration.labels("a", "b").observe(0)
    for gauge in (
        metrics.last_success,
        metrics.last_attempt,
        metrics.consecutive_failures,
        metrics.failing_since,
        metrics.max_staleness,
    ):
        gauge.labels("a").set(0)
    metrics.sync_entries.labels("a", "b").inc(0)
    metrics.upstream_requests.labels("a", "b").inc(0)
    metrics.upstream_duration.labels("a").observe(0)
    metrics.rule_hits.labels("a").inc(0)
    metrics.circuit_open.labels("a").set(0)
    metrics.http_requests.labels("a", "b", "c").inc(0)
    metrics.http_duration.labels("a", "b", "c").observe(0)
    text = generate_latest(metrics.registry).decode()
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    return {name for name in samples if not name.endswith("_created")}


def referenced_series(text: str) -> set[str]:
    return set(re.findall(r"\b(?:subregistry|process|python)_[a-z_]+", text))


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_yamllint() -> None:
    result = subprocess.run(
        [
            str(BIN / "yamllint"),
            "-d",
            "{extends: relaxed, rules: {line-length: {max: 120}}}",
            "-s",
            str(DEPLOY),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_validate() -> None:
    result = subprocess.run(
        [
            str(BIN / "kubernetes-validate"),
            "--strict",
            "-k",
            "1.30.0",
            str(DEPLOY / "kubernetes" / "subregistry.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "subregistry.yaml").read_text()))
    kinds = {d["kind"] for d in docs}
    assert kinds == {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"}
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
    config = config_from_mapping(tomllib.loads(configmap["data"]["subregistry.toml"]))
    assert str(config.storage.path).startswith("/data")


def test_container_config_and_dockerfile() -> None:
    config = config_from_mapping(tomllib.loads((DEPLOY / "container/subregistry.toml").read_text()))
    assert config.api.host == "0.0.0.0" and str(config.storage.path) == "/data/subregistry.db"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    directives = [
        line.split()[0]
        for line in dockerfile.splitlines()
        if line and not line.startswith((" ", "#"))
    ]
    assert directives[0] == "FROM" and "slim" in dockerfile.splitlines()[2]
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert re.search(r"^VOLUME \[\"/data\"\]", dockerfile, re.M)
    assert "HEALTHCHECK" in directives and "/healthz" in dockerfile
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert (DEPLOY.parent / source).exists(), source


def test_compose_references_existing_files() -> None:
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"subregistry", "prometheus"}
    for volume in services["prometheus"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).exists(), volume
    assert (
        DEPLOY
        / services["subregistry"]["build"]["context"]
        / services["subregistry"]["build"]["dockerfile"]
    ).exists()
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["subregistry:8080"]


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (.ci/run installs it)")
def test_alert_rules_with_promtool() -> None:
    assert PROMTOOL is not None
    for args in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
        ["check", "config", "prometheus.yml"],
    ):
        result = subprocess.run(
            [PROMTOOL, *args],
            cwd=DEPLOY / "prometheus",
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd/subregistry.service").read_text()
    # verify checks that ExecStart exists; point it at this environment's installed command.
    local = unit.replace("/opt/subregistry/bin/subregistry", str(BIN / "subregistry"))
    path = tmp_path / "subregistry.service"
    path.write_text(local)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_and_dashboard_use_only_exported_series() -> None:
    exported = exported_series()
    alerts = (DEPLOY / "prometheus/alerts.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana/subregistry-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = referenced_series(alerts) | referenced_series(exprs)
    assert used <= exported, used - exported

    def base(name: str) -> str:
        return re.sub(r"_(total|bucket|count|sum)$", "", name)

    # The dashboard shows every series the daemon exports itself, and a few standard ones.
    own = {base(n) for n in exported if n.startswith("subregistry_")}
    shown = {base(n) for n in referenced_series(exprs)}
    assert own == {n for n in shown if n.startswith("subregistry_")}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= shown


def test_file_descriptor_limits_fit_the_connection_bound() -> None:
    """Each kit grants the descriptors its configuration's connection bound needs."""

    def needed(toml: str) -> int:
        return config_from_mapping(tomllib.loads(toml)).api.max_connections + FD_RESERVE

    # The unit runs config/example.toml (its install note copies it).
    unit = (DEPLOY / "systemd/subregistry.service").read_text()
    [limit] = re.findall(r"^LimitNOFILE=(\d+)$", unit, re.M)
    example = (DEPLOY.parent / "config/example.toml").read_text()
    assert needed(example) <= int(limit)

    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    nofile = compose["services"]["subregistry"]["ulimits"]["nofile"]
    image_config = (DEPLOY / "container/subregistry.toml").read_text()
    assert needed(image_config) <= min(nofile["soft"], nofile["hard"])

    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "subregistry.yaml").read_text()))
    [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    documented = deployment["spec"]["template"]["metadata"]["annotations"]["subregistry/min-nofile"]
    assert needed(configmap["data"]["subregistry.toml"]) == int(documented)
