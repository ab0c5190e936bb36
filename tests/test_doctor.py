"""`erpsync doctor` / `setup` against deliberately misconfigured real servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from click.testing import CliRunner

from erpsync.cli import main
from erpsync.testing.postgres import ThrowawayPostgres

STOCK = {"table": "stock_levels", "sku": "sku", "warehouse": "warehouse_code",
         "quantity": "on_hand - reserved", "locations": {"WH-MAD": "madrid"}}


def write_config(tmp_path: Path, source: dict[str, Any], **extra: Any) -> str:
    cfg = {"source": source, "stock": {**STOCK, **extra.pop("stock", {})},
           "sinks": [{"name": "shop", "kind": "webhook", "url": "http://127.0.0.1:9/", "unsigned": True}],
           "outbox": {"path": str(tmp_path / "outbox.db")}, **extra}
    p = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def doctor(config: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    r = CliRunner().invoke(main, ["doctor", "--config", config, "--json"])
    data = json.loads(r.stdout)
    text = CliRunner().invoke(main, ["doctor", "--config", config]).stdout
    return r.exit_code, {c["name"]: c for c in data["checks"]}, text


def pg_exec(dsn: str, *stmts: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for s in stmts:
            cur.execute(s)
    conn.close()


PG_TABLE = ("CREATE TABLE stock_levels (id serial PRIMARY KEY, sku text, warehouse_code text, "
            "on_hand int, reserved int)")


# -- PostgreSQL --------------------------------------------------------------------------------------
def test_pg_correct_setup_passes(pg_dsn: str, tmp_path: Path) -> None:
    pg_exec(pg_dsn, PG_TABLE)
    code, checks, text = doctor(write_config(tmp_path, {"kind": "postgres", "dsn": pg_dsn}))
    assert code == 0, text
    assert all(c["status"] in ("PASS", "WARN") for c in checks.values()), text
    for name in ("wal_level", "replication privilege", "select on mapped tables", "publication",
                 "replica identity", "replication slot", "max_replication_slots", "max_wal_senders"):
        assert checks[name]["status"] == "PASS", text
    # the throwaway server leaves max_slot_wal_keep_size unlimited: a warning with a fix
    assert checks["max_slot_wal_keep_size"]["status"] == "WARN"
    assert "max_slot_wal_keep_size" in checks["max_slot_wal_keep_size"]["fix"]


def test_pg_wal_level_replica_fails_with_fix(tmp_path: Path) -> None:
    with ThrowawayPostgres(wal_level="replica") as pg:
        pg_exec(pg.dsn(), PG_TABLE)
        code, checks, text = doctor(write_config(tmp_path, {"kind": "postgres", "dsn": pg.dsn()}))
    assert code == 1
    assert checks["wal_level"]["status"] == "FAIL"
    assert "wal_level=replica" in checks["wal_level"]["detail"]
    assert "ALTER SYSTEM SET wal_level = logical;" in checks["wal_level"]["fix"]
    assert "FAIL  wal_level: wal_level=replica" in text
    assert "fix: ALTER SYSTEM SET wal_level = logical;" in text


def test_pg_role_without_replication_fails_with_fix(pg_dsn: str, tmp_path: Path) -> None:
    pg_exec(pg_dsn, PG_TABLE, "CREATE ROLE plain_reader LOGIN",
            "GRANT SELECT ON stock_levels TO plain_reader")
    dsn = pg_dsn.replace("user=postgres", "user=plain_reader")
    code, checks, _ = doctor(write_config(tmp_path, {"kind": "postgres", "dsn": dsn}))
    assert code == 1
    assert checks["replication privilege"]["status"] == "FAIL"
    assert checks["replication privilege"]["fix"] == 'ALTER ROLE "plain_reader" WITH REPLICATION;'
    # it cannot create the publication either (does not own the table)
    assert checks["publication"]["status"] == "FAIL"
    assert 'CREATE PUBLICATION "erpsync" FOR TABLE "public"."stock_levels";' in checks["publication"]["fix"]
    assert checks["select on mapped tables"]["status"] == "PASS"


def test_pg_keyless_table_needs_replica_identity_full(pg_dsn: str, tmp_path: Path) -> None:
    pg_exec(pg_dsn, "CREATE TABLE stock_levels (sku text, warehouse_code text, on_hand int, reserved int)")
    cfg = write_config(tmp_path, {"kind": "postgres", "dsn": pg_dsn})
    code, checks, _ = doctor(cfg)
    assert code == 1 and checks["replica identity"]["status"] == "FAIL"
    fix = checks["replica identity"]["fix"]
    assert fix.startswith('ALTER TABLE "public"."stock_levels" REPLICA IDENTITY FULL;')
    pg_exec(pg_dsn, fix.split(";")[0])
    code, checks, text = doctor(cfg)
    assert code == 0 and checks["replica identity"]["status"] == "PASS", text


def test_pg_setup_apply_gives_a_least_privilege_role_doctor_accepts(pg_dsn: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pg_exec(pg_dsn, PG_TABLE, "CREATE TABLE other_secret_table (x int)")
    password = "pw-never-printed-7f3a"
    monkeypatch.setenv("ERPSYNC_DB_PASSWORD", password)
    monkeypatch.setenv("ADMIN_DSN", pg_dsn)
    app_dsn = pg_dsn.replace("user=postgres", "user=erpsync_app")
    cfg = write_config(tmp_path, {"kind": "postgres", "dsn": app_dsn, "create_publication": False})
    printed = CliRunner().invoke(main, ["setup", "--config", cfg, "--print-sql"])
    assert printed.exit_code == 0, printed.output
    sql = printed.stdout
    assert password not in sql
    assert 'CREATE ROLE "erpsync_app" WITH LOGIN REPLICATION PASSWORD :\'erpsync_password\';' in sql
    assert 'GRANT SELECT ON TABLE "public"."stock_levels" TO "erpsync_app";' in sql
    assert 'CREATE PUBLICATION "erpsync" FOR TABLE "public"."stock_levels";' in sql
    assert "other_secret_table" not in sql and "ALL TABLES" not in sql

    applied = CliRunner().invoke(main, ["setup", "--config", cfg, "--apply", "--admin-dsn-env", "ADMIN_DSN"])
    assert applied.exit_code == 0, applied.output
    assert password not in applied.output
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT rolreplication, rolsuper, rolpassword IS NOT NULL FROM pg_authid "
                    "WHERE rolname = 'erpsync_app'")
        assert cur.fetchone() == (True, False, True)
        cur.execute("SELECT has_table_privilege('erpsync_app', 'other_secret_table', 'SELECT')")
        assert cur.fetchone() == (False,)
    conn.close()
    code, checks, text = doctor(cfg)
    assert code == 0, text
    assert checks["publication"]["status"] == "PASS" and checks["replication privilege"]["status"] == "PASS"
    # re-running is harmless (ALTER ROLE, no second publication)
    again = CliRunner().invoke(main, ["setup", "--config", cfg, "--apply", "--admin-dsn-env", "ADMIN_DSN"])
    assert again.exit_code == 0, again.output


def test_setup_sql_quotes_identifiers() -> None:
    from cdc.sources.mysql.admin import my_ident, my_literal
    from cdc.sources.postgres.admin import pg_ident, pg_table

    assert pg_ident('we"ird') == '"we""ird"'
    assert pg_table('s"x.t; DROP TABLE y') == '"s""x"."t; DROP TABLE y"'
    assert my_ident("a`b") == "`a``b`"
    assert my_literal("o'k\\") == "'o''k\\\\'"


# -- MariaDB -----------------------------------------------------------------------------------------
def _mariadb(**kw: Any) -> Iterator[Any]:
    try:
        from erpsync.testing.mariadb import ThrowawayMariaDB
    except ImportError:
        pytest.skip("ThrowawayMariaDB not available")
    try:
        db = ThrowawayMariaDB(**kw).start()
    except RuntimeError as e:
        pytest.skip(str(e))
    try:
        db.create_database("erp")
        conn = db.connect("erp")
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE stock_levels (id int PRIMARY KEY, sku varchar(40), "
                        "warehouse_code varchar(10), on_hand int, reserved int)")
        conn.close()
        yield db
    finally:
        db.stop()


@pytest.fixture(scope="module")
def maria_ok() -> Iterator[Any]:
    yield from _mariadb(binlog_row_metadata="FULL")


def my_source(db: Any, user: str = "root", server_id: int = 4242) -> dict[str, Any]:
    return {"kind": "mysql", "host": "127.0.0.1", "port": db.port, "user": user, "password": "",
            "database": "erp", "server_id": server_id}


def test_mariadb_correct_setup_passes(maria_ok: Any, tmp_path: Path) -> None:
    code, checks, text = doctor(write_config(tmp_path, my_source(maria_ok)))
    assert code == 0, text
    for name in ("log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata", "grants",
                 "mapped tables", "server_id", "gtid", "binlog retention"):
        assert checks[name]["status"] == "PASS", text


def test_mariadb_statement_format_fails(tmp_path: Path) -> None:
    for db in _mariadb(binlog_format="STATEMENT"):
        code, checks, text = doctor(write_config(tmp_path, my_source(db)))
    assert code == 1
    assert checks["binlog_format"]["status"] == "FAIL", text
    assert "SET GLOBAL binlog_format = 'ROW';" in checks["binlog_format"]["fix"]
    assert "binlog_format=ROW" in checks["binlog_format"]["fix"]


def test_mariadb_minimal_row_image_fails(tmp_path: Path) -> None:
    for db in _mariadb(binlog_row_image="MINIMAL"):
        code, checks, text = doctor(write_config(tmp_path, my_source(db)))
    assert code == 1
    assert checks["binlog_row_image"]["status"] == "FAIL", text
    assert "SET GLOBAL binlog_row_image = 'FULL';" in checks["binlog_row_image"]["fix"]
    # metadata left at the server default: a warning, not a failure
    assert checks["binlog_row_metadata"]["status"] == "WARN"


def test_mariadb_grants_retention_and_server_id(maria_ok: Any, tmp_path: Path) -> None:
    conn = maria_ok.connect()
    with conn.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'weak'@'%'")
        cur.execute("SET GLOBAL binlog_expire_logs_seconds = 3600")
    try:
        cfg = write_config(tmp_path, my_source(maria_ok, user="weak", server_id=1))
        code, checks, text = doctor(cfg)
        assert code == 1
        fix = checks["grants"]["fix"]
        assert "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'weak'@'%';" in fix, text
        assert "GRANT SELECT ON `erp`.`stock_levels` TO 'weak'@'%';" in fix
        assert checks["server_id"]["status"] == "FAIL"  # 1 is the server's own id
        assert checks["binlog retention"]["status"] == "FAIL"
        assert "binlog_expire_logs_seconds" in checks["binlog retention"]["fix"]
        # the printed setup for MySQL grants exactly that, with no password
        sql = CliRunner().invoke(main, ["setup", "--config", cfg, "--print-sql"]).stdout
        assert "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'weak'@'%';" in sql
        assert "GRANT SELECT ON `erp`.`stock_levels` TO 'weak'@'%';" in sql
        with conn.cursor() as cur:
            for stmt in sql.splitlines():
                if stmt.startswith("GRANT"):
                    cur.execute(stmt.split(";")[0])
            cur.execute("SET GLOBAL binlog_expire_logs_seconds = 0")
        code, checks, text = doctor(write_config(tmp_path, my_source(maria_ok, user="weak")))
        assert checks["grants"]["status"] == "PASS", text
        assert code == 0, text
    finally:
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL binlog_expire_logs_seconds = 0")
            cur.execute("DROP USER IF EXISTS 'weak'@'%'")
        conn.close()


def test_parse_grants_variants() -> None:
    from cdc.sources.mysql.admin import parse_grants

    g = parse_grants([
        "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `erpsync`@`%` IDENTIFIED BY PASSWORD '*ABC'",
        "GRANT SELECT ON `erp`.`stock_levels` TO `erpsync`@`%`",
        "GRANT SELECT (sku, qty) ON `erp`.`prices` TO `erpsync`@`%`",
        "GRANT ALL PRIVILEGES ON `shop`.* TO `erpsync`@`%`",
    ])
    assert g["*.*"] == {"REPLICATION SLAVE", "BINLOG MONITOR"}
    assert g["erp.stock_levels"] == {"SELECT"}
    assert g["erp.prices"] == {"SELECT (COLUMNS)"}
    assert g["shop.*"] == {"ALL PRIVILEGES"}


def test_status_reads_the_binlog_position(maria_ok: Any, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, my_source(maria_ok))
    r = CliRunner().invoke(main, ["status", "--config", cfg, "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert st["erp"]["reachable"] and st["erp"]["current"].startswith("binlog.")
    assert st["source"]["position"] is None and st["sinks"]["shop"]["pending"] == 0


def test_connect_errors_carry_their_type() -> None:
    from cdc.changes import SourceMisconfigured, SourceUnavailable
    from cdc.sources.admin import ConnectError, connect_error

    for msg in ("source: cannot connect to MySQL at 127.0.0.1:3307: Can't connect to MySQL server on "
                "'127.0.0.1' ([Errno 111] Connection refused)",
                "source.dsn: cannot connect to PostgreSQL: FATAL:  the database system is starting up",
                "source.dsn: cannot connect to PostgreSQL: timeout expired"):
        e = connect_error(msg)
        assert isinstance(e, SourceUnavailable) and isinstance(e, ConnectError) and str(e) == msg
    for msg in ("source: cannot connect to MySQL at h:3306: Access denied for user 'x'@'y' "
                "(using password: YES)",
                'source.dsn: cannot connect to PostgreSQL: FATAL:  password authentication failed for "u"',
                'source.dsn: cannot connect to PostgreSQL: FATAL:  role "nobody" does not exist'):
        e = connect_error(msg)
        assert isinstance(e, SourceMisconfigured) and isinstance(e, ConnectError)


# -- issue #15: least privilege, ownership, TLS ------------------------------------------------------------
def _role_state(dsn: str, role: str) -> tuple[Any, ...] | None:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT rolreplication, rolpassword, shobj_description(oid, 'pg_authid') FROM pg_authid "
                    "WHERE rolname = %s", (role,))
        row = cur.fetchone()
    conn.close()
    return row


def test_pg_setup_never_touches_the_erp_applications_own_role(pg_dsn: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    app = f"odoo_{uuid.uuid4().hex[:8]}"  # the ERP application's role, which erpsync did not create
    pg_exec(pg_dsn, PG_TABLE, f"CREATE ROLE {app} LOGIN PASSWORD 'the-erp-apps-own-pw'",
            f"GRANT SELECT ON stock_levels TO {app}")
    before = _role_state(pg_dsn, app)
    monkeypatch.setenv("ERPSYNC_DB_PASSWORD", "pw-of-erpsync-9d1c")
    monkeypatch.setenv("ADMIN_DSN", pg_dsn)
    cfg = write_config(tmp_path, {"kind": "postgres", "dsn": pg_dsn.replace("user=postgres", f"user={app}")})
    for args in (["--print-sql"], ["--apply", "--admin-dsn-env", "ADMIN_DSN"]):
        r = CliRunner().invoke(main, ["setup", "--config", cfg, *args])
        assert r.exit_code != 0, r.output
        assert f"role {app!r} exists and was not created by erpsync setup" in r.output, r.output
        assert "--adopt-role" in r.output and "ALTER ROLE" not in r.output
        assert _role_state(pg_dsn, app) == before  # password, REPLICATION: untouched
    # a dedicated role: created with erpsync's mark, and re-running it is fine
    own = f"erpsync_{uuid.uuid4().hex[:8]}"
    printed = CliRunner().invoke(main, ["setup", "--config", cfg, "--role", own])
    assert printed.exit_code == 0, printed.output
    assert f'CREATE ROLE "{own}"' in printed.output and f'COMMENT ON ROLE "{own}"' in printed.output
    for _ in range(2):
        r = CliRunner().invoke(main, ["setup", "--config", cfg, "--role", own, "--apply",
                                      "--admin-dsn-env", "ADMIN_DSN"])
        assert r.exit_code == 0, r.output
    state = _role_state(pg_dsn, own)
    assert state is not None and state[0] is True and "erpsync" in state[2]
    # a superuser is never altered, not even with --adopt-role
    r = CliRunner().invoke(main, ["setup", "--config", cfg, "--role", "postgres", "--adopt-role"])
    assert r.exit_code != 0 and "superuser" in r.output, r.output
    # explicit take-over
    r = CliRunner().invoke(main, ["setup", "--config", cfg, "--apply", "--adopt-role", "--admin-dsn-env",
                                  "ADMIN_DSN"])
    assert r.exit_code == 0, r.output
    assert f'ALTER ROLE "{app}"' in r.output
    after = _role_state(pg_dsn, app)
    assert after is not None and after[0] is True and after[1] != before[1] and "erpsync" in after[2]


def _odoo_config(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    root = Path(__file__).resolve().parent.parent
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute((root / "config/schemas/odoo-postgres.sql").read_text())
    conn.close()
    monkeypatch.setenv("ERP_DSN", pg_dsn)
    return str(root / "config/odoo-postgres.yaml")


ODOO_TABLES = ["product_product", "stock_location", "product_pricelist", "stock_quant",
               "product_pricelist_item"]


def test_setup_and_doctor_cover_every_table_the_mapping_reads(pg_dsn: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _odoo_config(pg_dsn, monkeypatch)
    r = CliRunner().invoke(main, ["setup", "--config", cfg, "--role", "erpsync_odoo_reader"])
    assert r.exit_code == 0, r.output
    pub = next(line for line in r.stdout.splitlines() if line.startswith("CREATE PUBLICATION"))
    for t in ODOO_TABLES:  # lookups included
        assert f'GRANT SELECT ON TABLE "public"."{t}" TO "erpsync_odoo_reader";' in r.stdout, r.stdout
        assert f'"public"."{t}"' in pub
    _, checks, text = doctor(cfg)
    for t in ODOO_TABLES:
        assert f"public.{t}" in checks["select on mapped tables"]["detail"], text


def test_pg_doctor_warns_a_superuser_dsn_and_a_for_all_tables_publication(pg_dsn: str,
                                                                         tmp_path: Path) -> None:
    pg_exec(pg_dsn, PG_TABLE, "CREATE PUBLICATION erpsync FOR ALL TABLES")
    try:
        _, checks, text = doctor(write_config(tmp_path, {"kind": "postgres", "dsn": pg_dsn}))
    finally:
        pg_exec(pg_dsn, "DROP PUBLICATION erpsync")
    assert checks["least privilege"]["status"] == "WARN", text
    assert "superuser 'postgres'" in checks["least privilege"]["detail"]
    assert "erpsync setup" in checks["least privilege"]["fix"]
    assert checks["publication"]["status"] == "WARN", text
    assert "FOR ALL TABLES" in checks["publication"]["detail"]
    assert 'FOR TABLE "public"."stock_levels"' in checks["publication"]["fix"]
    # the throwaway server has no TLS: cleartext, acceptable on loopback only
    assert checks["tls"]["status"] == "PASS" and checks["tls"]["detail"].startswith("TLS: cleartext"), text
    assert "loopback" in checks["tls"]["detail"]


def test_teardown_leaves_another_tools_slot_and_publication_alone(pg_dsn: str, tmp_path: Path) -> None:
    pg_exec(pg_dsn, PG_TABLE, "CREATE TABLE their_table (id int PRIMARY KEY)",
            "CREATE PUBLICATION erpsync FOR TABLE their_table")  # same name, another tool's, no mark
    db = pg_dsn.split("dbname=")[1].split()[0]
    slot = f"s_{db}"[:63]
    pg_exec(pg_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')")
    cfg = write_config(tmp_path, {"kind": "postgres", "dsn": pg_dsn, "slot": slot})
    try:
        r = CliRunner().invoke(main, ["teardown", "--config", cfg, "--yes"])
        assert r.exit_code == 1, r.output
        assert f"replication slot {slot!r} is not erpsync's (plugin=test_decoding" in r.output, r.output
        assert "Traceback" not in r.output
        conn = psycopg2.connect(pg_dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            assert cur.fetchone() == ("test_decoding",)
        conn.close()
        pg_exec(pg_dsn, f"SELECT pg_drop_replication_slot('{slot}')")
        r = CliRunner().invoke(main, ["teardown", "--config", cfg, "--yes"])
        assert r.exit_code == 0, r.output
        assert "publication 'erpsync' left alone" in r.output, r.output
        conn = psycopg2.connect(pg_dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'erpsync'")
            assert cur.fetchall() == [("their_table",)]
        conn.close()
    finally:
        pg_exec(pg_dsn, "DROP PUBLICATION IF EXISTS erpsync",
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                f"WHERE slot_name = '{slot}'")


def test_snapshot_reset_with_the_erp_down_clears_nothing(tmp_path: Path) -> None:
    from cdc.outbox.store import Outbox
    from erpsync.testing import free_port

    cfg = write_config(tmp_path, {"kind": "postgres", "dsn": f"host=127.0.0.1 port={free_port()} dbname=x "
                                  "user=x connect_timeout=2"})
    ob = Outbox(tmp_path / "outbox.db")
    ob.set_position("postgres:erpsync", "0/16B3748", commit_ts=1.0)
    ob.commit()
    ob.close()
    r = CliRunner().invoke(main, ["snapshot", "--config", cfg, "--reset", "--yes"])
    assert r.exit_code == 1, r.output
    assert "nothing was reset" in r.output and "cannot connect" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    ob = Outbox(tmp_path / "outbox.db")
    assert ob.position("postgres:erpsync") == "0/16B3748"
    ob.close()


def test_missing_ca_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    for source in ({"kind": "postgres", "dsn": "host=db.example dbname=x user=y"},
                   {"kind": "mysql", "host": "db.example", "database": "x"}):
        cfg = write_config(tmp_path, {**source, "tls": {"ca_file": str(tmp_path / "nope.pem")}})
        r = CliRunner().invoke(main, ["doctor", "--config", cfg])
        assert r.exit_code == 2, r.output
        assert "source.tls.ca_file" in r.output and "no such file" in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit)


def test_mariadb_setup_teardown_and_doctor_respect_users_erpsync_did_not_create(
        maria_ok: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPSYNC_DB_PASSWORD", "pw-of-erpsync-2b7e")
    monkeypatch.setenv("ADMIN_DSN", f"mysql://root:@127.0.0.1:{maria_ok.port}/")
    root_cfg = write_config(tmp_path, my_source(maria_ok))
    r = CliRunner().invoke(main, ["teardown", "--config", root_cfg, "--yes"])
    assert r.exit_code == 0, r.output
    assert "DROP USER" not in r.output, r.output  # never `DROP USER 'root'@'%'`
    r = CliRunner().invoke(main, ["setup", "--config", root_cfg, "--role", "root"])
    assert r.exit_code != 0 and "never alters 'root'" in r.output, r.output
    _, checks, text = doctor(root_cfg)
    assert checks["least privilege"]["status"] == "WARN", text
    assert checks["tls"]["status"] == "PASS" and checks["tls"]["detail"].startswith("TLS: cleartext"), text

    conn = maria_ok.connect()
    with conn.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'dolibarr'@'%' IDENTIFIED BY 'the-erp-apps-own-pw'")
        cur.execute("SELECT authentication_string FROM mysql.user WHERE User = 'dolibarr'")
        before = cur.fetchone()
    try:
        app_cfg = write_config(tmp_path, {**my_source(maria_ok, user="dolibarr"),
                                          "password": "the-erp-apps-own-pw"})
        r = CliRunner().invoke(main, ["setup", "--config", app_cfg, "--apply", "--admin-dsn-env",
                                      "ADMIN_DSN"])
        assert r.exit_code != 0, r.output
        assert "'dolibarr'@'%' exists" in r.output and "--adopt-role" in r.output, r.output
        with conn.cursor() as cur:
            cur.execute("SELECT authentication_string FROM mysql.user WHERE User = 'dolibarr'")
            assert cur.fetchone() == before
            cur.execute("SHOW GRANTS FOR 'dolibarr'@'%'")
            assert not any("REPLICATION" in g[0] for g in cur.fetchall())
        printed = CliRunner().invoke(main, ["setup", "--config", app_cfg])
        assert "CREATE USER 'dolibarr'@'%' IDENTIFIED BY" in printed.stdout  # fails on an existing user
        assert "ALTER USER" not in printed.stdout and "IF NOT EXISTS" not in printed.stdout
        r = CliRunner().invoke(main, ["setup", "--config", app_cfg, "--apply", "--adopt-role",
                                      "--admin-dsn-env", "ADMIN_DSN"])
        assert r.exit_code == 0, r.output
        assert "ALTER USER 'dolibarr'@'%'" in r.output
        r = CliRunner().invoke(main, ["teardown", "--config", write_config(
            tmp_path, {**my_source(maria_ok, user="dolibarr"), "password": "pw-of-erpsync-2b7e"}), "--yes"])
        assert r.exit_code == 0 and "DROP USER 'dolibarr'@'%';" in r.output, r.output
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP USER IF EXISTS 'dolibarr'@'%'")
        conn.close()


def _openssl(*args: str) -> None:
    import subprocess

    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _tls_files() -> tuple[str, str, str]:
    """A CA, a server certificate for 127.0.0.1 it signed, and another CA; readable by the server's user."""
    import os
    import pwd
    import tempfile

    d = tempfile.mkdtemp(prefix="erpsync-tls-")
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                 "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.pem")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", f"{d}/server.key",
             "-out", f"{d}/server.csr")
    Path(f"{d}/ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{d}/ext.cnf", "-out", f"{d}/server.pem")
    os.chmod(f"{d}/server.key", 0o600)
    os.chmod(d, 0o755)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for f in (d, f"{d}/server.key", f"{d}/server.pem"):
            os.chown(f, pw.pw_uid, pw.pw_gid)
    return d, f"{d}/ca.pem", f"{d}/other-ca.pem"


def test_pg_verified_tls_and_a_wrong_ca(tmp_path: Path) -> None:
    import shutil

    d, ca, other = _tls_files()
    try:
        with ThrowawayPostgres(extra_conf={"ssl": "on", "ssl_cert_file": f"'{d}/server.pem'",
                                           "ssl_key_file": f"'{d}/server.key'"}) as pg:
            pg_exec(pg.dsn(), PG_TABLE)
            _, checks, text = doctor(write_config(tmp_path, {"kind": "postgres", "dsn": pg.dsn(),
                                                             "tls": {"ca_file": ca}}))
            assert checks["tls"]["status"] == "PASS", text
            assert checks["tls"]["detail"].startswith("TLS: verified (sslmode=verify-full"), text
            # the DSN's own sslmode is honoured: TLS, but nothing checked
            _, checks, text = doctor(write_config(tmp_path, {"kind": "postgres",
                                                             "dsn": pg.dsn() + " sslmode=require"}))
            assert checks["tls"]["status"] == "WARN" and "TLS: unverified" in checks["tls"]["detail"], text
            wrong = write_config(tmp_path, {"kind": "postgres", "dsn": pg.dsn(), "tls": {"ca_file": other}})
            code, checks, text = doctor(wrong)
            assert code == 1 and checks["connect"]["status"] == "FAIL", text
            assert "certificate verify failed" in checks["connect"]["detail"], text
            r = CliRunner().invoke(main, ["status", "--config", wrong])
            assert "certificate verify failed" in r.output, r.output
            assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_mariadb_verified_tls_on_the_control_and_binlog_connections(tmp_path: Path) -> None:
    import os
    import pwd
    import shutil
    import ssl

    from cdc.sources.mysql.config import MySQLSourceConfig
    from cdc.sources.mysql.connection import Dump, connect
    from cdc.sources.mysql.position import BinlogPosition

    d, ca, other = _tls_files()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("mysql")
        for f in (d, f"{d}/server.key", f"{d}/server.pem"):
            os.chown(f, pw.pw_uid, pw.pw_gid)
    try:
        for db in _mariadb(binlog_row_metadata="FULL",
                           extra_conf={"ssl_cert": f"{d}/server.pem", "ssl_key": f"{d}/server.key"}):
            source = {**my_source(db), "tls": {"ca_file": ca, "verify": True}}
            _, checks, text = doctor(write_config(tmp_path, source))
            assert checks["tls"]["status"] == "PASS", text
            assert checks["tls"]["detail"].startswith("TLS: verified"), text
            cfg = MySQLSourceConfig.model_validate(source)
            ctl = connect(cfg)
            with ctl.cursor() as cur:
                cur.execute("SHOW MASTER STATUS")
                file, offset = cur.fetchone()[:2]
            ctl.close()
            dump = Dump(cfg, True, BinlogPosition(file, int(offset)), use_gtid=False, blocking=False)
            try:
                assert isinstance(dump.conn._sock, ssl.SSLSocket)  # the binlog dump is encrypted too
                assert dump.read()  # and readable
            finally:
                dump.close()
            code, checks, text = doctor(write_config(tmp_path, {**source, "tls": {"ca_file": other}}))
            assert code == 1 and checks["connect"]["status"] == "FAIL", text
            assert "CERTIFICATE_VERIFY_FAILED" in checks["connect"]["detail"].upper(), text
    finally:
        shutil.rmtree(d, ignore_errors=True)
