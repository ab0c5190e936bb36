"""Drive the normalizer from real SQL on a real ERP database and compare with the snapshot SELECT.

PostgreSQL: each statement runs with RETURNING (and a SELECT of the before-image), so the normalizer sees
the values and types the database really holds. MariaDB: the normalizer reads the real binlog through the
MySQL source, each committed transaction as the server logged it. After each committed ERP transaction the
facts go through a real outbox commit, then the outbox is compared with ``facts_select`` run on the ERP at
the same ``now``."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from cdc.changes import RowChange, SourceInfo
from cdc.facts import Fact, FactKey
from cdc.mapping.snapshot_sql import facts_select
from cdc.normalize.normalizer import normalizer_for
from cdc.outbox.store import Outbox
from erpsync.config import load_config_text
from tests.fixtures_mariadb import USER_PASSWORD

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


class _Harness:
    """Outbox, normalizer clock and the stream == snapshot comparison shared by both databases."""

    dialect = ""
    cfg: Any
    outbox: Outbox
    norm: Any
    now: float

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._store(self.norm.due_timers(self.now))

    def _store(self, facts: list[Any]) -> None:
        self.outbox.begin()
        self.norm.flush()
        self.outbox.write_facts(facts)
        self.outbox.commit()

    # comparison ------------------------------------------------------------------------------------
    def expected(self) -> dict[str, dict[tuple[str, str], Any]]:
        out: dict[str, dict[tuple[str, str], Any]] = {}
        for kind, sql in facts_select(self.cfg, self.dialect, now=self.now).items():
            rows = self._q(sql)
            if kind == "stock":
                out[kind] = {(r["sku"], r["location"]): int(r["available"]) for r in rows}
            else:
                out[kind] = {
                    (r["sku"], r["price_list"]): (
                        Decimal(r["amount"]),
                        r["currency"] or "",
                        None if r["compare_at"] is None else Decimal(r["compare_at"]),
                    )
                    for r in rows
                }
        return out

    def actual(self) -> dict[str, dict[tuple[str, str], Any]]:
        out: dict[str, dict[tuple[str, str], Any]] = {"stock": {}, "price": {}}
        for f in self.outbox.facts():
            if f.kind == "stock":
                out["stock"][(f.sku, f.key.scope)] = f.available
            else:
                cmp = f.value.get("compare_at")
                out["price"][(f.sku, f.key.scope)] = (
                    f.amount,
                    f.value["currency"] or "",
                    None if cmp is None else Decimal(cmp),
                )
        return out

    def check(self) -> None:
        """Streamed facts == snapshot facts. A stock key the snapshot lacks must be 0 (retired); a price
        the snapshot lacks is the kept last price (no line valid now), so only snapshot keys compare."""
        exp, got = self.expected(), self.actual()
        s_exp, s_got = exp.get("stock", {}), got["stock"]
        bad = {k: (v, s_got.get(k)) for k, v in s_exp.items() if s_got.get(k, 0) != v}
        bad |= {k: (0, v) for k, v in s_got.items() if k not in s_exp and v != 0}
        assert not bad, f"stock (snapshot, stream) differ: {bad}"
        p_exp, p_got = exp.get("price", {}), got["price"]
        badp = {k: (v, p_got.get(k)) for k, v in p_exp.items() if p_got.get(k) != v}
        assert not badp, f"price (snapshot, stream) differ: {badp}"


class PgHarness(_Harness):
    dialect = "postgres"

    def __init__(self, dsn: str, config: str, schema: str, tmp: Path) -> None:
        import psycopg2

        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        text = (ROOT / "config" / config).read_text().replace("${ERP_DSN}", dsn)
        self.cfg = load_config_text(text, "<test>")
        self.schema_sql = (ROOT / "config" / "schemas" / schema).read_text()
        self.tmp = tmp
        self.n = 0
        self.now = T0

    def reset(self) -> None:
        with self.conn.cursor() as c:
            c.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            c.execute(self.schema_sql)
        self.n += 1
        self.outbox = Outbox(self.tmp / f"o{self.n}.db", {}, durable=False)
        self.norm = normalizer_for(self.cfg, self.outbox.conn, clock=lambda: self.now)
        self.pending: list[RowChange] = []

    def close(self) -> None:
        self.conn.close()

    # ERP writes ------------------------------------------------------------------------------------
    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor() as c:
            c.execute(sql, args)
            if c.description is None:
                return []
            names = [d[0] for d in c.description]
            return [dict(zip(names, r, strict=True)) for r in c.fetchall()]

    def _src(self, table: str) -> SourceInfo:
        return SourceInfo("postgresql", "erp", "public", table)

    def begin(self) -> None:
        self._q("BEGIN")

    def insert(self, table: str, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        (after,) = self._q(
            f"INSERT INTO {table} ({cols}) VALUES ({', '.join(['%s'] * len(row))}) RETURNING *",
            tuple(row.values()),
        )
        self.pending.append(RowChange("c", self._src(table), None, after, ("id",)))

    def update(self, table: str, id_: int, **vals: Any) -> None:
        before = self._q(f"SELECT * FROM {table} WHERE id=%s", (id_,))
        if not before:
            return
        sets = ", ".join(f"{k}=%s" for k in vals)
        (after,) = self._q(f"UPDATE {table} SET {sets} WHERE id=%s RETURNING *", (*vals.values(), id_))
        self.pending.append(RowChange("u", self._src(table), {"id": id_}, after, ("id",)))

    def delete(self, table: str, id_: int) -> None:
        gone = self._q(f"DELETE FROM {table} WHERE id=%s RETURNING id", (id_,))
        if gone:
            self.pending.append(RowChange("d", self._src(table), {"id": id_}, None, ("id",)))

    def commit(self) -> None:
        self._q("COMMIT")
        facts = self.norm.apply(self.pending, "p", self.now)
        self.pending = []
        self._store(facts)


class MariaHarness(_Harness):
    """The normalizer fed from the real binlog: each ERP transaction is committed by plain SQL, then the
    MySQL source's stream is read up to the position SHOW MASTER STATUS gives right after the COMMIT."""

    dialect = "mysql"

    def __init__(self, server: Any, config: str, schema: str, tmp: Path) -> None:
        self.server = server
        self.conn = server.connect()
        self.text = (ROOT / "config" / config).read_text()
        schema_sql = (ROOT / "config" / "schemas" / schema).read_text()
        body = "\n".join(ln for ln in schema_sql.splitlines() if not ln.lstrip().startswith("--"))
        self.schema_stmts = [s for s in body.split(";") if s.strip()]
        self.tmp = tmp
        self.n = 0
        self.now = T0
        self.source: Any = None

    def reset(self) -> None:
        from cdc.sources.mysql.replication import MySQLSource

        self.close_source()
        self.n += 1
        db = self.server.create_database(f"mprop{self.n}")
        self._q(f"USE `{db}`")
        for stmt in self.schema_stmts:
            self._q(stmt)
        text = self.text.replace("${ERP_PASSWORD}", USER_PASSWORD).replace("${ERP_DATABASE:-dolibarr}", db)
        self.cfg = load_config_text(text.replace("${ERP_PORT:-3306}", str(self.server.port)), "<test>")
        self.outbox = Outbox(self.tmp / f"m{self.n}.db", {}, durable=False)
        self.norm = normalizer_for(self.cfg, self.outbox.conn, clock=lambda: self.now)
        self.source = MySQLSource(self.cfg.source, self.norm.tables)
        self.logged = self._master()
        self.stream = self.source.stream(self.logged)

    def close_source(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None

    def close(self) -> None:
        self.close_source()
        self.conn.close()

    def _master(self) -> str:
        r = self._q("SHOW MASTER STATUS")[0]
        return f"{r['File']}:{r['Position']}"

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor() as c:
            c.execute(sql, args or None)
            if c.description is None:
                return []
            names = [d[0] for d in c.description]
            return [dict(zip(names, r, strict=True)) for r in c.fetchall()]

    def begin(self) -> None:
        self._q("BEGIN")

    def exec(self, sql: str, args: tuple[Any, ...] = ()) -> bool:
        """One ERP statement; a duplicate key fails it alone (InnoDB rolls back the statement, not the
        transaction), as it would in the ERP."""
        import pymysql

        try:
            self._q(sql, args)
            return True
        except pymysql.err.IntegrityError:
            return False

    def commit(self, timeout: float = 20.0) -> None:
        """COMMIT, then apply what the binlog holds for it: chunks up to the commit at the master's
        position after our COMMIT (a transaction that changed nothing is not logged: nothing to wait for)."""
        import time

        self._q("COMMIT")
        target = self._master()
        if self.source.compare(target, self.logged) <= 0:
            return
        facts: dict[FactKey, Fact] = {}
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"binlog did not reach {target}"
            chunk = next(self.stream)
            if chunk.changes:
                for f in self.norm.apply(chunk.changes, "", self.now):
                    facts[f.key] = f
            if chunk.commit is not None and self.source.compare(chunk.commit.position, target) >= 0:
                break
        self.logged = target
        self._store(list(facts.values()))


def replay(h: Any, steps: list[Any], run_op: Callable[[Any, tuple[Any, ...]], None]) -> None:
    """Run hypothesis steps (ERP transactions of operations, or clock advances) and check the stream
    against the snapshot SELECT after each one."""
    for s in steps:
        if s[0] == "clock":
            h.advance(s[1])
        else:
            h.begin()
            for o in s[1]:
                run_op(h, o)
            h.commit()
        h.check()
