"""Every file in deploy/ is checked by what can run here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sync.config import config_from_mapping, load_config
from sync.metrics import Metrics
from sync.serve.server import FD_RESERVE

DEPLOY = Path(__file__).parent.parent / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*.y*ml"))
BIN = Path(sys.executable).parent


def exported_series() -> set[str]:
    """Every sample name the daemon can export, with its histogram and counter suffixes."""
    metrics = Metrics()
    metrics.served_versions.labels("v", "x").set(0)
    metrics.served_servers.labels("v").set(0)
    metrics.quarantined.labels("x").set(0)
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
    metrics.rule_hits.labels("v", "a").inc(0)
    metrics.circuit_open.labels("a").set(0)
    metrics.http_requests.labels("v", "a", "b", "c").inc(0)
    metrics.http_duration.labels("v", "a", "b", "c").observe(0)
    text = generate_latest(metrics.registry).decode()
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    return {name for name in samples if not name.endswith("_created")}


def referenced_series(text: str) -> set[str]:
    return set(re.findall(r"\b(?:subregistry|process|python)_[a-z_]+", text))


def manifest(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


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
            str(DEPLOY / "kubernetes" / "subregistry-postgres.yaml"),
            str(DEPLOY / "kubernetes" / "ingress.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed for resource ingress/subregistry" in result.stdout + result.stderr
    docs = manifest("subregistry.yaml")
    kinds = {d["kind"] for d in docs}
    assert kinds == {
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
    config = config_from_mapping(tomllib.loads(configmap["data"]["subregistry.toml"]))
    assert str(config.storage.path).startswith("/data")
    # The only replica stays in its Service through an upstream outage.
    assert deployment["spec"]["replicas"] == 1 and config.api.readiness == "serve"


def test_kubernetes_budget_policy_and_ingress_fit_the_deployment() -> None:
    docs = manifest("subregistry.yaml")
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}

    budget = one(docs, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # One replica: a budget that forbids evicting it would block every node drain.
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]

    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    [ingress_rule] = policy["ingress"]
    assert {p["port"] for p in ingress_rule["ports"]} <= port_names
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP")} <= egress

    [ingress] = manifest("ingress.yaml")
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    paths = []
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in service_ports
            paths.append(path["path"])
    # The registry API only: /metrics, /healthz and /readyz stay inside the cluster.
    assert {"/openapi.yaml", "/v0", "/v0.1"} <= set(paths)
    assert not [p for p in paths if p in ("/", "/metrics", "/healthz", "/readyz")]


# The part of the Prometheus Operator's ServiceMonitor CRD this kit uses; unknown keys fail
# (kubernetes-validate knows no CRDs).
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                            "scrapeTimeout": {
                                "type": "string",
                                "pattern": "^([0-9]+(ms|s|m|h))+$",
                            },
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("variant", ["subregistry.yaml", "subregistry-postgres.yaml"])
def test_service_monitor_scrapes_the_service(variant: str) -> None:
    """Either variant's Service is scraped, under the job the alerts watch."""
    [monitor] = manifest("servicemonitor.yaml")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    service = one(manifest(variant), "Service")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The operator takes the job from the Service label `jobLabel` names (else the Service's
    # name): it must be the job SubregistryDown watches.
    job = labels.get(monitor["spec"].get("jobLabel", ""), service["metadata"]["name"])
    assert f'up{{job="{job}"}}' in (DEPLOY / "prometheus/alerts.yml").read_text()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**monitor, "spec": {**monitor["spec"], "endpoint": []}}, SERVICE_MONITOR_SCHEMA
        )


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
    services = {n: s for n, s in compose["services"].items() if "profiles" not in s}
    assert set(services) == {"subregistry", "prometheus", "alertmanager", "grafana"}
    mounts: dict[str, dict[str, Path]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume
                mounts.setdefault(name, {})[target] = DEPLOY / source
    assert (
        DEPLOY
        / services["subregistry"]["build"]["context"]
        / services["subregistry"]["build"]["dockerfile"]
    ).exists()

    def ports(service: str) -> set[str]:
        return {p.split(":")[-1] for p in services[service]["ports"]}

    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["subregistry:8080"]
    assert prometheus["scrape_configs"][0]["job_name"] == "subregistry"
    [alerting] = prometheus["alerting"]["alertmanagers"]
    [target] = alerting["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "alertmanager" and port in ports("alertmanager")
    # The rule files Prometheus loads are the ones in this directory, mounted beside it.
    for rule_file in prometheus["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounts["prometheus"]

    # Alertmanager runs the shipped configuration; its routes and inhibitions name real
    # receivers and real alerts.
    [am_flag] = services["alertmanager"]["command"]
    am_config = mounts["alertmanager"][am_flag.split("=", 1)[1]]
    manager = yaml.safe_load(am_config.read_text())
    receivers = {r["name"] for r in manager["receivers"]}
    routes = [manager["route"], *manager["route"].get("routes", [])]
    assert {r["receiver"] for r in routes} <= receivers
    alerts = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    alert_names = {r["alert"] for g in alerts["groups"] for r in g["rules"]}
    for rule in manager["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            if matcher.startswith("alertname="):
                assert matcher.split("=", 1)[1].strip('"') in alert_names, matcher

    # Grafana: the data source is compose's Prometheus, the dashboard provider reads the
    # directory the shipped dashboard is mounted in.
    grafana = mounts["grafana"]
    provisioning = grafana["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == f"http://prometheus:{sorted(ports('prometheus'))[0]}"
    [provider] = yaml.safe_load((provisioning / "dashboards/subregistry.yml").read_text())[
        "providers"
    ]
    dashboards = {target: path for target, path in grafana.items() if path.suffix == ".json"}
    assert {str(Path(t).parent) for t in dashboards} == {provider["options"]["path"]}
    assert set(dashboards.values()) == {DEPLOY / "grafana/subregistry-dashboard.json"}


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


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_is_hardened() -> None:
    """`systemd-analyze security` rates the unit "OK": an exposure of 2.0 or less."""
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            str(DEPLOY / "systemd/subregistry.service"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match[1]) <= 2.0, result.stdout


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


def test_systemd_unit_keeps_the_mirror_in_its_state_directory() -> None:
    """Relative paths in a file mean its folder (/etc/subregistry, read-only under
    ProtectSystem=strict): the unit names the database by the environment override, inside
    the StateDirectory it owns, and reloads with SIGHUP."""
    unit = (DEPLOY / "systemd/subregistry.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    environment = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in unit.splitlines()
        if line.startswith("Environment=")
    )
    database = Path(environment["SUBREGISTRY_STORAGE__PATH"])
    assert database.is_absolute()
    assert database.parent == Path("/var/lib") / settings["StateDirectory"]
    assert settings["ProtectSystem"] == "strict"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"


def _compose_value(text: str, env: dict[str, str]) -> str:
    """Compose's `${NAME:-default}` interpolation, as `docker compose` does it."""

    def value(match: re.Match[str]) -> str:
        return env.get(match[1]) or match[2]

    return re.sub(r"\$\{(\w+):-([^}]*)\}", value, text)


def test_kubernetes_postgres_variant_fits_together() -> None:
    """Two replicas on the database named by the Secret: the variable the Deployment sets is
    the one that selects PostgreSQL, the probes and ports are the configuration's, nothing is
    kept in the pod, and a drain never takes the last replica."""
    docs = manifest("subregistry-postgres.yaml")
    assert {d["kind"] for d in docs} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # Nothing of the mirror in the pod: the configuration and the tokens only, read-only.
    assert all(set(v) - {"name"} <= {"configMap", "secret"} for v in pod["volumes"])
    assert all(m["readOnly"] for m in pod["containers"][0]["volumeMounts"])
    [container] = pod["containers"]
    assert container["args"][-1] == "serve"  # every replica may lead; none is --no-sync

    [env] = container["env"]
    secret = env["valueFrom"]["secretKeyRef"]
    assert secret["name"] and secret["key"] and "value" not in env
    configmap = one(docs, "ConfigMap")
    [mounted] = [v for v in pod["volumes"] if v.get("configMap")]
    assert mounted["configMap"]["name"] == configmap["metadata"]["name"]
    toml = configmap["data"]["subregistry.toml"]
    dsn = "postgresql://subregistry:pw@db.example:5432/subregistry"
    config_file = f"/etc/subregistry/{next(iter(configmap['data']))}"
    assert container["args"][:2] == ["--config", config_file]
    # The ConfigMap alone is SQLite; the Secret's variable turns it into PostgreSQL.
    assert not config_from_mapping(tomllib.loads(toml)).storage.postgres
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subregistry.toml"
        path.write_text(toml)
        config = load_config(path, env={env["name"]: dsn})
    assert config.storage.url == dsn
    assert config.api.readiness == "serve"  # a follower's readiness is not about leading

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.api.port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    annotations = spec["template"]["metadata"]["annotations"]
    assert int(annotations["subregistry/min-nofile"]) == config.api.max_connections + FD_RESERVE
    assert int(annotations["prometheus.io/port"]) == config.api.port

    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    budget = one(docs, "PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == 1 < spec["replicas"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (443, "TCP"), (5432, "TCP")} <= egress


def test_compose_postgres_profile() -> None:
    """The profile's replicas reach the profile's database with its credentials, only once
    it is healthy, on the port the image's configuration serves."""
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    profiled = {n for n, s in services.items() if "postgres" in s.get("profiles", [])}
    assert profiled == {"postgres", "subregistry-postgres"}
    database, replicas = services["postgres"], services["subregistry-postgres"]
    assert "pg_isready" in " ".join(database["healthcheck"]["test"])
    assert replicas["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert replicas["deploy"]["replicas"] == 2
    assert replicas["image"] == services["subregistry"]["image"]

    env = {"POSTGRES_PASSWORD": "from-the-shell"}
    db_env = {k: _compose_value(str(v), env) for k, v in database["environment"].items()}
    image_config = (DEPLOY / "container/subregistry.toml").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subregistry.toml"
        path.write_text(image_config)
        overrides = {k: _compose_value(v, env) for k, v in replicas["environment"].items()}
        config = load_config(path, env=overrides)
    assert config.storage.url is not None
    url = urlsplit(config.storage.url)
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.username == db_env["POSTGRES_USER"] and url.password == db_env["POSTGRES_PASSWORD"]
    assert url.path == f"/{db_env['POSTGRES_DB']}"
    assert "--locale=C" in db_env["POSTGRES_INITDB_ARGS"]
    published = {p.split(":")[-1] for p in replicas["ports"]}
    assert published == {str(config.api.port)}
    assert set(compose["volumes"]) >= {v.split(":")[0] for v in database["volumes"]}
