"""The scale-out profile of docker-compose.yml, checked statically (docker cannot run here): 3 NATS nodes
with JetStream in one cluster, a reader on the NATS bus, and workers covering every partition once."""

from __future__ import annotations

import pytest

from erpsync.delivery.nats_bus import parse_partitions
from tests.test_compose import SERVICES, host_path


def test_scaleout_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    from erpsync.config import load_config

    prof = {n: s for n, s in SERVICES.items() if "scaleout" in (s.get("profiles") or [])}
    nodes = [n for n in prof if n.startswith("nats-")]
    assert len(nodes) == 3
    for n in nodes:
        cmd = prof[n]["command"]
        assert "-js" in cmd and "--cluster_name" in cmd and "--routes" in cmd
        routes = cmd[cmd.index("--routes") + 1].split(",")
        assert sorted(r.split("//")[1].split(":")[0] for r in routes) == sorted(set(nodes) - {n})
    reader = prof["erpsync-reader"]
    for k in ("POSTGRES_PASSWORD", "SHOP_SECRET"):
        monkeypatch.setenv(k, "x")
    cfg = load_config(host_path("erpsync-reader", reader["command"][2]))
    assert cfg.bus.kind == "nats" and cfg.bus.replicas == 3
    assert {u.split("//")[1].split(":")[0] for u in cfg.bus.url.split(",")} == set(nodes)
    assert cfg.source.slot != "erpsync"  # runs beside the default erpsync service without taking its slot
    workers = [s for n, s in prof.items() if n.startswith("worker-")]
    assert len(workers) == 2
    covered: list[int] = []
    for w in workers:
        cmd = w["command"]
        assert cmd[0] == "worker" and host_path("worker-1", cmd[2]).is_file()
        covered += parse_partitions(cmd[cmd.index("--partitions") + 1], cfg.bus.partitions)
        assert cfg.sink(cmd[cmd.index("--sink") + 1])
    assert sorted(covered) == list(range(cfg.bus.partitions))
