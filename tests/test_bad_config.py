"""Bad input is refused before anything starts, with the YAML path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from erpsync.cli import main
from erpsync.testing.postgres import ThrowawayPostgres
from tests.erp import PostgresErp


def write(tmp_path: Path, cfg: dict) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["--log-format", "text", *args])
    return r.exit_code, r.output


@pytest.fixture
def erp(pg_dsn: str):
    e = PostgresErp(pg_dsn)
    e.create_stock_table()
    yield e
    e.close()


def base(erp: PostgresErp, tmp_path: Path, **stock: str) -> dict:
    cfg = yaml.safe_load(Path(erp.config(tmp_path, "http://127.0.0.1:9/hook")).read_text())
    cfg["stock"].update(stock)
    return cfg


def catalog_objects(erp: PostgresErp) -> int:
    return int(erp.query("SELECT count(*) FROM pg_class")[0][0])


@pytest.mark.parametrize("change, where", [
    ({"table": "public.stock_levelz"}, "stock.table"),
    ({"quantity": "on_hand - reservd"}, "stock.quantity"),
    ({"warehouse": "warehouse"}, "stock.warehouse"),
    ({"quantity": "note"}, "stock.quantity"),           # text where a number is needed
    ({"quantity": "on_hand - note"}, "stock.quantity"),  # the database refuses numeric - text
])
def test_wrong_table_column_or_type_is_refused_with_yaml_path(erp, tmp_path, change, where):
    before = catalog_objects(erp)
    code, out = run("run", "--config", write(tmp_path, base(erp, tmp_path, **change)))
    assert code == 2, out
    assert where in out
    assert catalog_objects(erp) == before  # nothing created on the ERP
    assert not erp.query("SELECT 1 FROM pg_replication_slots WHERE database = current_database()")


def test_wrong_yaml_types_and_unknown_keys(erp, tmp_path):
    cfg = base(erp, tmp_path)
    cfg["stock"]["safety_stock"] = "two"
    cfg["stock"]["bogus"] = 1
    code, out = run("run", "--config", write(tmp_path, cfg))
    assert code == 2
    assert "stock.safety_stock" in out and "stock.bogus" in out


def test_missing_env_var_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("source: {kind: postgres, dsn: '${ERPSYNC_TEST_UNSET_DSN}'}\n")
    code, out = run("config", "validate", "--offline", str(p))
    assert code == 2 and "source.dsn: environment variable ERPSYNC_TEST_UNSET_DSN is not set" in out


def test_rule_that_does_not_compile_is_refused_at_load(erp, tmp_path):
    code, out = run("config", "validate", "--offline",
                    write(tmp_path, base(erp, tmp_path, quantity="on_hand +")))
    assert code == 2 and "stock.quantity" in out


def test_wal_level_replica_says_what_to_change(tmp_path):
    with ThrowawayPostgres(wal_level="replica") as pg:
        erp = PostgresErp(pg.create_database("erp"))
        erp.create_stock_table()
        code, out = run("run", "--config", write(tmp_path, base(erp, tmp_path)))
        erp.close()
    assert code == 1
    assert "wal_level" in out and "ALTER SYSTEM SET wal_level = logical" in out


def test_missing_replication_privilege_says_what_to_change(erp, tmp_path):
    erp.execute("CREATE ROLE shopsync LOGIN")
    erp.execute("GRANT SELECT ON stock_levels TO shopsync")
    cfg = base(erp, tmp_path)
    cfg["source"]["dsn"] = erp.dsn.replace("user=postgres", "user=shopsync")
    code, out = run("run", "--config", write(tmp_path, cfg))
    assert code == 1
    assert "ALTER ROLE shopsync WITH REPLICATION" in out.replace('"', "")


def test_bad_ops_listen_is_refused_at_load(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("source: {kind: postgres, dsn: 'host=x'}\n"
                 "stock: {table: t, sku: s, warehouse: w, quantity: q, locations: {a: b}}\n"
                 "ops: {listen: nope}\n")
    code, out = run("config", "validate", "--offline", str(p))
    assert code == 2 and "ops.listen" in out
