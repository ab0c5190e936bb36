"""docker-compose.yml, Prometheus, Grafana and alert files, checked statically (docker cannot run here):
every service is buildable or pulled, every mounted file exists, ports and hostnames line up, and every
metric the dashboard and the alerts use exists in erpsync's registry."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from erpsync import metrics
from erpsync.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def mounts(service: str) -> dict[str, Path]:
    """container path → host path, for bind mounts."""
    out = {}
    for v in SERVICES[service].get("volumes", []):
        host, container = v.split(":")[:2]
        if host.startswith("."):
            out[container] = (ROOT / host).resolve()
    return out


def host_path(service: str, container_path: str) -> Path:
    """Where a path inside the container comes from on the host (through a bind mount)."""
    for container, host in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == container or container_path.startswith(container.rstrip("/") + "/"):
            return host / container_path[len(container):].lstrip("/")
    raise AssertionError(f"{service}: {container_path} is not mounted from the host")


def test_services_present_and_buildable() -> None:
    assert {"postgres", "mariadb", "erpsync", "shop", "prometheus", "grafana"} <= set(SERVICES)
    for name, svc in SERVICES.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            ctx = svc["build"] if isinstance(svc["build"], str) else svc["build"]["context"]
            assert (ROOT / ctx / "Dockerfile").is_file(), name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["erpsync"]' in dockerfile and "USER erpsync" in dockerfile
    assert "pip install ." in dockerfile


def test_volumes_exist() -> None:
    named = set(COMPOSE.get("volumes") or {})
    for name, svc in SERVICES.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name}: {src} does not exist"
            else:
                assert src in named, f"{name}: named volume {src} is not declared"
        for dep in (svc.get("depends_on") or []):
            assert dep in SERVICES, f"{name} depends on unknown {dep}"


def test_ports_published_on_loopback_only() -> None:
    for name, svc in SERVICES.items():
        for p in svc.get("ports", []):
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", str(p)), f"{name}: {p} is not loopback-only"


def test_databases_are_configured_for_cdc() -> None:
    pg = " ".join(SERVICES["postgres"]["command"])
    assert "wal_level=logical" in pg and "max_replication_slots" in pg
    assert "max_slot_wal_keep_size" in pg  # a dead erpsync cannot fill the demo's disk
    maria = " ".join(SERVICES["mariadb"]["command"])
    for opt in ("--log-bin", "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL"):
        assert opt in maria
    schema = host_path("postgres", "/docker-entrypoint-initdb.d/01-schema.sql")
    cfg_tables = ("stock_quant", "product_product", "stock_location", "product_pricelist_item")
    assert all(f"CREATE TABLE {t}" in schema.read_text() for t in cfg_tables)


def test_erpsync_service_config_lines_up(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = SERVICES["erpsync"]
    cmd = svc["command"]
    assert cmd[:2] == ["run", "--config"]
    cfg_path = host_path("erpsync", cmd[2])
    assert cfg_path == ROOT / "config" / "compose.yaml"
    for k in ("POSTGRES_PASSWORD", "SHOP_SECRET"):
        assert k in svc["environment"]
        monkeypatch.setenv(k, "x")
    cfg = load_config(cfg_path)
    assert cfg.source.kind == "postgres"
    dsn = cfg.source.dsn.get_secret_value()
    assert "host=postgres" in dsn and "dbname=erp" in dsn
    assert SERVICES["postgres"]["environment"]["POSTGRES_DB"] == "erp"
    # outbox on the named volume
    assert any(v.split(":")[1] == str(Path(cfg.outbox.path).parent) for v in svc["volumes"])
    # the shop emulator answers where the sink points
    shop_cmd = SERVICES["shop"]["command"]
    port = shop_cmd[shop_cmd.index("--port") + 1]
    assert shop_cmd[:2] == ["emulate", "webhook"] and "0.0.0.0" in shop_cmd
    assert cfg.sinks[0].url == f"http://shop:{port}/hook"
    assert shop_cmd[shop_cmd.index("--secret-env") + 1] in SERVICES["shop"]["environment"]
    # ops endpoint: listened on, published, scraped
    ops_port = cfg.ops.listen.rsplit(":", 1)[1]
    assert f"127.0.0.1:{ops_port}:{ops_port}" in svc["ports"]
    prom = yaml.safe_load((ROOT / "config/prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"erpsync:{ops_port}" in targets


def test_prometheus_and_grafana_files_are_mounted() -> None:
    prom = yaml.safe_load((ROOT / "config/prometheus.yml").read_text())
    assert host_path("prometheus", "/etc/prometheus/prometheus.yml") == ROOT / "config/prometheus.yml"
    for rf in prom["rule_files"]:
        assert host_path("prometheus", rf) == ROOT / "config/prometheus-alerts.yml"
    prov = host_path("grafana", "/etc/grafana/provisioning")
    ds = yaml.safe_load((prov / "datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["uid"] == "prometheus"
    dash_prov = yaml.safe_load((prov / "dashboards/erpsync.yml").read_text())["providers"][0]
    dash_dir = host_path("grafana", dash_prov["options"]["path"])
    assert dash_dir == ROOT / "config/grafana/dashboards"
    dash = json.loads((dash_dir / "erpsync.json").read_text())
    assert dash["panels"] and all(t["datasource"]["uid"] == ds["uid"] for p in dash["panels"]
                                  for t in p["targets"])


def registry_names() -> set[str]:
    """Every series name the registry can expose (counter _total, histogram _bucket/_sum/_count, ...)."""
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                "gauge": [""], "summary": ["", "_sum", "_count", "_created"]}
    out = set()
    for fam in metrics.REGISTRY.collect():
        for sfx in suffixes.get(fam.type, [""]):
            out.add(fam.name + sfx)
    return out


def used_metric_names() -> dict[str, set[str]]:
    dash = json.loads((ROOT / "config/grafana/dashboards/erpsync.json").read_text())
    exprs = {"dashboard": [t["expr"] for p in dash["panels"] for t in p["targets"]]}
    alerts = yaml.safe_load((ROOT / "config/prometheus-alerts.yml").read_text())
    exprs["alerts"] = [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    return {k: {m for e in v for m in re.findall(r"\berpsync_[a-z0-9_]+", e)} for k, v in exprs.items()}


def test_every_metric_in_dashboard_and_alerts_exists() -> None:
    have = registry_names()
    used = used_metric_names()
    assert len(used["dashboard"]) >= 10 and len(used["alerts"]) >= 5
    for where, names in used.items():
        missing = names - have
        assert not missing, f"{where} uses metrics erpsync does not export: {sorted(missing)}"


def test_alerts_cover_the_operational_failures() -> None:
    alerts = yaml.safe_load((ROOT / "config/prometheus-alerts.yml").read_text())
    rules = {r["alert"]: r for g in alerts["groups"] for r in g["rules"]}
    assert "erpsync_source_lag_seconds" in rules["ErpsyncSourceLagHigh"]["expr"]
    assert "erpsync_source_retained_bytes" in rules["ErpsyncSlotRetainingWAL"]["expr"]
    assert "erpsync_dlq_size" in rules["ErpsyncDLQGrowing"]["expr"]
    sink_down = rules["ErpsyncSinkDown"]["expr"]
    assert "erpsync_sink_last_success_timestamp" in sink_down and "erpsync_outbox_pending" in sink_down
    assert "erpsync_source_connected" in rules["ErpsyncSourceDisconnected"]["expr"]
    for r in rules.values():
        assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]
