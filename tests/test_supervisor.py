"""`erpsync run`'s restart policy decides by the exception's type, against real servers: an ERP that refuses
connections is waited for (only when the outbox has worked before, and up to --wait-for-erp); credentials a
person must fix stop at once, whatever the outbox says."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from erpsync.config import load_config
from erpsync.supervisor import Stop, Supervisor
from erpsync.testing import free_port
from tests.erp import Erp


def config_with(erp: Erp, tmp_path: Path, **source: Any) -> Any:
    path = Path(erp.config(tmp_path, "http://127.0.0.1:9/unused"))
    data = yaml.safe_load(path.read_text())
    if erp.kind == "postgres" and "dsn" in source:
        data["source"]["dsn"] = source.pop("dsn")
    data["source"].update(source)
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def refused(erp: Erp) -> dict[str, Any]:
    port = free_port()
    return {"dsn": f"host=127.0.0.1 port={port} dbname=x connect_timeout=3"} if erp.kind == "postgres" \
        else {"port": port}


def bad_credentials(erp: Erp) -> dict[str, Any]:
    if erp.kind == "postgres":
        return {"dsn": erp.dsn + " user=no_such_role_here"}  # type: ignore[attr-defined]  (the last one wins)
    return {"password": "certainly-wrong"}


def test_refused_erp_stops_a_first_run_at_once(erp: Erp, tmp_path: Path) -> None:
    sup = Supervisor(config_with(erp, tmp_path, **refused(erp)), wait_for_erp=30)
    started = time.monotonic()
    with pytest.raises(Stop) as e:
        sup.wait_until_mapping_fits(threading.Event())
    assert e.value.code == 1 and time.monotonic() - started < 15


def test_refused_erp_is_waited_for_when_the_outbox_has_worked(erp: Erp, tmp_path: Path) -> None:
    cfg = config_with(erp, tmp_path, **refused(erp))
    cfg.outbox_path().write_bytes(b"x" * 4096)  # an outbox from earlier runs
    sup = Supervisor(cfg, wait_for_erp=2.0)
    started = time.monotonic()
    with pytest.raises(Stop):
        sup.wait_until_mapping_fits(threading.Event())
    assert time.monotonic() - started >= 2.0  # retried until --wait-for-erp ran out, then stopped

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    assert Supervisor(cfg, wait_for_erp=60).wait_until_mapping_fits(stop) is False  # SIGTERM while waiting


def test_bad_credentials_stop_at_once_even_with_an_outbox(erp: Erp, tmp_path: Path) -> None:
    cfg = config_with(erp, tmp_path, **bad_credentials(erp))
    cfg.outbox_path().write_bytes(b"x" * 4096)
    started = time.monotonic()
    with pytest.raises(Stop) as e:
        Supervisor(cfg, wait_for_erp=60).wait_until_mapping_fits(threading.Event())
    assert time.monotonic() - started < 15
    assert "certainly-wrong" not in str(e.value)
