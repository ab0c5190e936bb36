"""The PostgreSQL reader gives exactly the value the database holds, or stops with a clear error."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import psycopg2
import pytest

from cdc.changes import SourceError
from tests.test_pg_source import _db, drain, execute, insert_lsn, make_source, rows, snapshot_all

__all__ = ["make_source"]  # the fixture, used by name

FLOAT_ROWS = ("(0, 0.1::float8 + 0.2::float8, 5592405.5::real), (1, 1e-310, '1.17549435e-38'::real), "
              "(2, 1.7976931348623157e308, 3.4028235e38::real), (3, 'NaN', '-Infinity'), "
              "(4, '-0', 16777216::real), (5, 2.2250738585072014e-308, '1.4e-45'::real), "
              "(6, 1.0/3, 0.1::real), (7, 123456789.123456789, 8388607.5::real)")


def _shift(values: str, by: int) -> str:
    return re.sub(r"\((\d+),", lambda m: f"({int(m.group(1)) + by},", values)


def _select_exact(dsn: str) -> dict[int, tuple[float, float]]:
    conn = psycopg2.connect(dsn, options="-c extra_float_digits=3")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, d, r FROM fl ORDER BY id")
            return {i: (d, r) for i, d, r in cur.fetchall()}
    finally:
        conn.close()


def _test_decoding(dsn: str, slot: str) -> dict[int, tuple[float, float]]:
    conn = psycopg2.connect(dsn, options="-c extra_float_digits=3")
    conn.autocommit = True
    out: dict[int, tuple[float, float]] = {}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL)", (slot,))
            for (line,) in cur.fetchall():
                if " INSERT: " in line:
                    f = dict(re.findall(r"(\w+)\[[^\]]+\]:(\S+)", line))
                    out[int(f["id"])] = (float(f["d"]), float(f["r"]))
    finally:
        conn.close()
    return out


def test_database_extra_float_digits_0_does_not_round_stream_or_snapshot(pg_dsn: str,
                                                                         make_source: Any) -> None:
    db = _db(pg_dsn)
    execute(pg_dsn, f'ALTER DATABASE "{db}" SET extra_float_digits = 0',
            "CREATE TABLE fl (id int PRIMARY KEY, d float8, r real)", f"INSERT INTO fl VALUES {FLOAT_ROWS}")
    assert execute(pg_dsn, "SHOW extra_float_digits") == [("0",)]  # new sessions of this database round
    src = make_source(["fl"])
    src.prepare()
    chunks, start = snapshot_all(src)
    execute(pg_dsn, f"SELECT pg_create_logical_replication_slot('td_{db}', 'test_decoding')")
    execute(pg_dsn, f"INSERT INTO fl VALUES {_shift(FLOAT_ROWS, 100)}")
    streamed = rows(drain(src, start, insert_lsn(pg_dsn)))
    exact = {i: tuple(map(repr, v)) for i, v in _select_exact(pg_dsn).items()}
    assert exact[0][0] == "0.30000000000000004" and exact[0][1] == "5592405.5"
    got = {r.after["id"]: (repr(r.after["d"]), repr(r.after["r"])) for r in [*rows(chunks), *streamed]}
    assert got == exact
    decoded = {i: tuple(map(repr, v)) for i, v in _test_decoding(pg_dsn, f"td_{db}").items()}
    assert decoded == {i: v for i, v in exact.items() if i >= 100}
    assert {i: v for i, v in got.items() if i >= 100} == decoded


def test_reader_behind_a_dropped_domain_stops_naming_the_column(pg_dsn: str, make_source: Any) -> None:
    execute(pg_dsn, "CREATE DOMAIN price_dom AS numeric(10,2)",
            "CREATE TABLE pr (id int PRIMARY KEY, price price_dom)")
    knew = make_source(["pr"])
    knew.prepare()
    _chunks, start = snapshot_all(knew)  # this reader has seen the domain: it keeps what it knew
    execute(pg_dsn, "INSERT INTO pr VALUES (1, 6.50)",
            "ALTER TABLE pr ALTER COLUMN price TYPE numeric(10,2)", "DROP DOMAIN price_dom",
            "INSERT INTO pr VALUES (2, 7.50)")
    end = insert_lsn(pg_dsn)
    behind = make_source(["pr"])  # a reader started after the DROP: the catalog no longer has the domain
    with pytest.raises(SourceError, match=r"column public\.pr\.price has type OID \d+, which is no longer"):
        drain(behind, start, end)
    behind.close()
    got = rows(drain(knew, start, end))
    assert [(r.after["id"], r.after["price"]) for r in got] == [(1, Decimal("6.50")), (2, Decimal("7.50"))]
    assert all(type(r.after["price"]) is Decimal for r in got)
