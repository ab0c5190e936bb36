"""PostgreSQL logical replication source: pgoutput over psycopg2's LogicalReplicationConnection.

psycopg 3 cannot read the replication stream, hence psycopg2. Three connections:
- the replication connection (slot creation with an exported snapshot, then START_REPLICATION),
- a side connection (autocommit: checks, heartbeats, lag, catalog look-ups),
- a snapshot connection, only while snapshot() copies the tables.
One thread calls everything (see cdc.changes.Source).
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from cdc.changes import (
    Chunk,
    Commit,
    RowChange,
    SourceError,
    SourceInfo,
    SourceMisconfigured,
    SourceUnavailable,
)
from cdc.sources.admin import first_line, is_transient
from cdc.sources.postgres.config import OWNED_MARK, PostgresSourceConfig
from cdc.sources.postgres.decoder import (
    SESSION_OPTIONS,
    PgOutputDecoder,
    Relation,
    UnknownType,
    converter_for,
    int_to_lsn,
    lsn_to_int,
)

__all__ = ["PostgresSource", "ReplicationConnectionLost", "int_to_lsn", "lsn_to_int"]

log = logging.getLogger(__name__)

CHUNK_ROWS = 5_000
CAUGHT_UP_BYTES = 1 << 20  # less WAL than this not yet sent or confirmed: the reader is not behind
IDLE_TICK = 0.5  # an empty chunk at least this often while idle, so the caller can stop / confirm
FIRST_USER_OID = 16384


class ReplicationConnectionLost(SourceUnavailable, ConnectionError):
    """The replication connection broke mid-stream; nothing unacked was confirmed. Restart the reader."""


def _driver_error(e: Exception) -> type[SourceError]:
    """A failed statement: a broken connection is time's to fix, anything else the server refused."""
    return SourceUnavailable if isinstance(e, psycopg2.OperationalError | psycopg2.InterfaceError) \
        else SourceMisconfigured


def split_table(name: str) -> tuple[str, str]:
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else ("public", name)


class PostgresSource:
    def __init__(self, config: PostgresSourceConfig, tables: list[str]) -> None:
        self.config = config
        self.tables = [split_table(t) for t in tables]
        self.name = f"postgresql/{config.slot}"
        self._dsn = config.dsn.get_secret_value()
        self._side: Any = None  # psycopg2 connection
        self._repl: Any = None  # LogicalReplicationConnection
        self._cur: Any = None  # ReplicationCursor while streaming
        self._acked = 0
        self._sent_ack = 0
        self._last_feedback = 0.0
        self._last_heartbeat = 0.0
        self._lag_cache: tuple[float, dict[str, Any]] | None = None
        self._idle = True
        self._sent_lsn = 0  # the server's sent position (wal_end) at the last empty read
        self.last_commit_ts = 0.0
        self._base_types: dict[int, int] = {}
        self.db = ""

    # -- connections -----------------------------------------------------------------------------------
    def _where(self) -> str:
        try:
            p = psycopg2.extensions.parse_dsn(self._dsn)
        except psycopg2.Error:
            return "the configured server"
        return f"host={p.get('host', 'localhost')} port={p.get('port', '5432')} dbname={p.get('dbname', '?')}"

    def _connect(self, **kw: Any) -> Any:
        try:
            opts = psycopg2.extensions.parse_dsn(self._dsn).get("options", "")
        except psycopg2.Error:
            # from None: libpq's parse error quotes fragments of the DSN, which may hold the password
            raise SourceMisconfigured("the PostgreSQL DSN could not be parsed (check its syntax)") from None
        try:
            return psycopg2.connect(self._dsn, options=f"{opts} {SESSION_OPTIONS}".strip(),
                                    application_name="erpsync", **self.config.tls_kwargs(), **kw)
        except psycopg2.OperationalError as e:
            # libpq's message names host/user but never the password; the DSN itself is not echoed.
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            kind = SourceUnavailable if is_transient(reason) else SourceMisconfigured
            raise kind(f"cannot connect to PostgreSQL at {self._where()}: {reason}") from None

    @property
    def side(self) -> Any:
        if self._side is None or self._side.closed:
            self._side = self._connect()
            self._side.autocommit = True
        return self._side

    def _q(self, query: Any, args: Any = None) -> list[tuple[Any, ...]]:
        with self.side.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else []

    def _open_repl(self) -> Any:
        self._close_repl()
        self._repl = self._connect(connection_factory=psycopg2.extras.LogicalReplicationConnection)
        return self._repl

    def _close_repl(self) -> None:
        if self._repl is not None:
            with contextlib.suppress(psycopg2.Error):
                self._repl.close()
        self._repl = self._cur = None

    # -- prepare ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """A raw driver error escaping here is a lost connection to the server: SourceUnavailable."""
        try:
            yield
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            self._close_repl()
            raise SourceUnavailable(f"connection to PostgreSQL at {self._where()} was lost: "
                                    f"{first_line(e)}") from e

    def prepare(self) -> None:
        with self._unavailable():
            self._prepare()

    def _prepare(self) -> None:
        self.db = self._q("SELECT current_database()")[0][0]
        wal_level = self._q("SHOW wal_level")[0][0]
        if wal_level != "logical":
            raise SourceMisconfigured(
                f"PostgreSQL at {self._where()} has wal_level={wal_level}; logical replication needs "
                "wal_level=logical. Run: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL.")
        user, can_repl, is_super = self._q(
            "SELECT rolname, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user")[0]
        if not (can_repl or is_super):
            stmt = sql.SQL("ALTER ROLE {} WITH REPLICATION;").format(sql.Identifier(user))
            stmt = stmt.as_string(self.side)
            raise SourceMisconfigured(f"role {user!r} may not use replication. As a superuser run: {stmt}")
        self._check_tables()
        slots = self._q("SELECT slot_name FROM pg_replication_slots")
        max_slots = int(self._q("SHOW max_replication_slots")[0][0])
        if self.config.slot not in {s[0] for s in slots} and len(slots) >= max_slots:
            raise SourceMisconfigured(
                f"all max_replication_slots={max_slots} replication slots are in use. Drop an unused one "
                "(SELECT slot_name, active FROM pg_replication_slots; "
                "SELECT pg_drop_replication_slot('name');)"
                " or raise it: ALTER SYSTEM SET max_replication_slots = "
                f"{max_slots + 2}; then restart PostgreSQL.")
        self._ensure_publication()

    def _check_tables(self) -> None:
        missing, unreadable = [], []
        for schema, table in self.tables:
            rows = self._q("SELECT c.oid, has_table_privilege(c.oid, 'SELECT') FROM pg_class c "
                           "JOIN pg_namespace n ON n.oid = c.relnamespace "
                           "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                           (schema, table))
            if not rows:
                missing.append(f"{schema}.{table}")
            elif not rows[0][1]:
                unreadable.append(sql.Identifier(schema, table).as_string(self.side))
        if missing:
            raise SourceMisconfigured(f"mapped table(s) not found in database {self.db!r}: "
                                      f"{', '.join(missing)} (check the table names in the mapping, or "
                                      "create the tables)")
        if unreadable:
            tabs = ", ".join(unreadable)
            raise SourceMisconfigured(f"the replication role cannot read {tabs}; "
                                      f"run: GRANT SELECT ON {tabs} TO <role>;")

    def _table_list(self, tables: list[tuple[str, str]]) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)

    def _ensure_publication(self) -> None:
        pub = sql.Identifier(self.config.publication)
        row = self._q("SELECT puballtables FROM pg_publication WHERE pubname = %s",
                      (self.config.publication,))
        if not row:
            create = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, self._table_list(self.tables))
            if not self.config.create_publication:
                raise SourceMisconfigured(f"publication {self.config.publication!r} does not exist; run: "
                                          f"{create.as_string(self.side)};")
            try:
                self._q(create)
                self._q(sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(pub, sql.Literal(OWNED_MARK)))
            except psycopg2.Error as e:
                raise SourceMisconfigured(f"could not create publication {self.config.publication!r} "
                                          f"({e.pgerror or e}); as the tables' owner run: "
                                          f"{create.as_string(self.side)};") from None
            return
        if row[0][0]:
            return  # FOR ALL TABLES
        have = set(self._q("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                           (self.config.publication,)))
        missing = [t for t in self.tables if t not in have]
        if missing:
            alter = sql.SQL("ALTER PUBLICATION {} ADD TABLE {};").format(pub, self._table_list(missing))
            names = ", ".join(f"{s}.{t}" for s, t in missing)
            raise SourceMisconfigured(f"publication {self.config.publication!r} does not include {names}; "
                                      f"run: {alter.as_string(self.side)}")

    # -- slot ------------------------------------------------------------------------------------------
    def _slot(self) -> tuple[Any, ...] | None:
        rows = self._q("SELECT wal_status, confirmed_flush_lsn, restart_lsn, active_pid, database "
                       "FROM pg_replication_slots WHERE slot_name = %s", (self.config.slot,))
        return rows[0] if rows else None

    @property
    def slot_exists(self) -> bool:
        return self._slot() is not None

    @property
    def wal_status(self) -> str | None:
        s = self._slot()
        return s[0] if s else None

    def needs_snapshot(self, stored_position: str | None) -> bool:
        with self._unavailable():
            return self._needs_snapshot(stored_position)

    def _needs_snapshot(self, stored_position: str | None) -> bool:
        if stored_position is None:
            return True
        s = self._slot()
        if s is None or s[0] == "lost" or (self.db and s[4] != self.db):
            state = "is missing" if s is None else ("lost its WAL (wal_status=lost)" if s[0] == "lost"
                                                    else f"belongs to database {s[4]!r}")
            raise SourceMisconfigured(
                f"replication slot {self.config.slot!r} {state} although a stored position "
                f"({stored_position}) exists — e.g. after a failover or when max_slot_wal_keep_size was "
                "exceeded. Changes may have been missed; re-snapshot with: erpsync snapshot --reset")
        return False

    def drop_slot(self) -> None:
        with self._unavailable():
            self._drop_slot()

    def _drop_slot(self) -> None:
        self._close_repl()
        here = self.db or self._q("SELECT current_database()")[0][0]
        rows = self._q("SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s",
                       (self.config.slot,))
        if rows and (rows[0][0] != "pgoutput" or rows[0][1] != here):
            raise SourceMisconfigured(f"replication slot {self.config.slot!r} is not erpsync's (plugin="
                                      f"{rows[0][0]}, database={rows[0][1]}; erpsync uses pgoutput on "
                                      f"{here}): left alone; set source.slot to another name")
        self._q("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active", (self.config.slot,))
        if self._slot() is not None:
            raise SourceMisconfigured(f"replication slot {self.config.slot!r} is in use by another process "
                                      "(pg_replication_slots.active_pid); stop it first")

    def publication_state(self) -> str:
        """"absent", "ours" (it carries erpsync's COMMENT) or "foreign"."""
        rows = self._q("SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s",
                       (self.config.publication,))
        if not rows:
            return "absent"
        return "ours" if rows[0][0] == OWNED_MARK else "foreign"

    def drop_publication(self) -> None:
        self._q(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(self.config.publication)))

    # -- catalog look-ups (shared by snapshot and stream so both convert and key identically) -----------
    def _base_type(self, oid: int) -> int:
        """Domains decode as their base type; other user types (enums, arrays, ...) stay text. A type the
        catalog no longer holds (a domain dropped after the row was written) raises UnknownType: guessing
        text would silently change the column's values."""
        if oid < FIRST_USER_OID:
            return oid
        if oid not in self._base_types:
            cur_oid = oid
            for _ in range(10):
                rows = self._q("SELECT typtype, typbasetype FROM pg_type WHERE oid = %s", (cur_oid,))
                if not rows:
                    raise UnknownType(f"type OID {cur_oid} is not in the catalog")
                if rows[0][0] != "d":
                    break
                cur_oid = rows[0][1]
            self._base_types[oid] = cur_oid
        return self._base_types[oid]

    def _key_of(self, rel_oid: int) -> tuple[str, ...] | None:
        """The replica identity index's columns if one is set, else the primary key's (as pgoutput flags)."""
        rows = self._q(
            "SELECT a.attname FROM (SELECT indexrelid, indrelid, indkey FROM pg_index WHERE indrelid = %s "
            "AND (indisprimary OR indisreplident) ORDER BY indisreplident DESC, indisprimary DESC LIMIT 1) i "
            "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(att, n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.att ORDER BY k.n", (rel_oid,))
        return tuple(r[0] for r in rows) or None

    def _full_key(self, rel: Relation) -> tuple[str, ...] | None:
        return self._key_of(rel.oid)

    # -- snapshot --------------------------------------------------------------------------------------
    def snapshot(self, tables: list[str] | None = None) -> Iterator[Chunk]:
        with self._unavailable():
            yield from self._snapshot(tables)

    def _snapshot(self, tables: list[str] | None) -> Iterator[Chunk]:
        wanted = [split_table(t) for t in tables] if tables else self.tables
        if not self.db:
            self.db = self._q("SELECT current_database()")[0][0]
        s = self._slot()
        if s is not None:  # leftover of an interrupted snapshot: its position is worthless now
            self.drop_slot()
        repl = self._open_repl()
        rcur = repl.cursor()
        try:
            rcur.execute(f'CREATE_REPLICATION_SLOT "{self.config.slot}" LOGICAL pgoutput EXPORT_SNAPSHOT')
            _slot, consistent_point, snapshot_name, _plugin = rcur.fetchone()
        except psycopg2.Error as e:
            self._close_repl()
            raise _driver_error(e)(f"could not create replication slot {self.config.slot!r}: "
                                   f"{(e.pgerror or str(e)).strip()}") from None
        # The exported snapshot lives until the replication connection's next command: keep it idle.
        conn = self._connect()
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with conn.cursor() as c:
                c.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
            pending: Chunk | None = None
            for schema, table in wanted:
                for chunk in self._copy_table(conn, schema, table):
                    if pending is not None:
                        yield pending
                    pending = chunk
            conn.rollback()
        finally:
            conn.close()
            self._close_repl()
        commit = Commit(position=consistent_point, ts=time.time())
        if pending is None:
            pending = Chunk(snapshot=True)
        pending.commit = commit
        yield pending

    def _copy_table(self, conn: Any, schema: str, table: str) -> Iterator[Chunk]:
        with conn.cursor() as c:
            c.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                      "WHERE n.nspname = %s AND c.relname = %s", (schema, table))
            row = c.fetchone()
            if row is None:
                raise SourceMisconfigured(f"mapped table {schema}.{table} not found in database {self.db!r}")
            oid = row[0]
            # Same columns as pgoutput sends: no dropped or generated columns, in attnum order.
            c.execute("SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                      "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", (oid,))
            cols = c.fetchall()
            c.execute("SELECT relreplident FROM pg_class WHERE oid = %s", (oid,))
            ident = c.fetchone()[0]
        names = tuple(n for n, _ in cols)
        for _, t in cols:
            self._raw_text_caster(conn, t)
        key = self._key_of(oid) or (names if ident == "f" else ())
        src = SourceInfo("postgresql", self.db, schema, table, "", None, int(time.time() * 1000))
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, names)) if names else sql.SQL("NULL"),
            sql.Identifier(schema, table))
        with conn.cursor(name=f"erpsync_snap_{oid}") as cur:
            cur.itersize = CHUNK_ROWS
            cur.execute(query)
            while True:
                rows = cur.fetchmany(CHUNK_ROWS)
                if not rows:
                    break
                changes = [RowChange("r", src, None, dict(zip(names, r, strict=True)), key) for r in rows]
                yield Chunk(changes=changes, snapshot=True)

    def _raw_text_caster(self, conn: Any, type_oid: int) -> None:
        """Make psycopg2 hand the server's text output of this type to our converter, exactly as pgoutput
        sends it (``col::text`` would differ: bool gives 'true', char(n) is trimmed, inet shows /32)."""
        conv = converter_for(self._base_type(type_oid))

        def cast(value: str | None, _cur: Any) -> Any:
            return None if value is None else conv(value.encode())

        psycopg2.extensions.register_type(psycopg2.extensions.new_type((type_oid,), f"erpsync_{type_oid}",
                                                                       cast), conn)

    # -- stream ----------------------------------------------------------------------------------------
    def stream(self, from_position: str) -> Iterator[Chunk]:
        with self._unavailable():
            yield from self._stream(from_position)

    def _stream(self, from_position: str) -> Iterator[Chunk]:
        start = lsn_to_int(from_position)
        if not self.db:
            self.db = self._q("SELECT current_database()")[0][0]
        repl, cur = self._start_replication(start, from_position)
        self._cur = cur
        # The per-message loop below stays in one frame on purpose: it is the hot path, and its state lives
        # in locals (not attributes or a helper's frame) for speed.
        dec = PgOutputDecoder(db=self.db, type_resolver=self._base_type, key_resolver=self._full_key)
        decode_row, decode = dec.decode_row, dec.decode
        read = cur.read_message
        last_pos = start  # highest position yielded (or resumed from)
        changes: list[RowChange] = []
        in_txn = skip = False
        last_yield = time.monotonic()
        now = last_yield
        try:
            while True:
                msg = read()
                if msg is None:
                    now = time.monotonic()
                    self._idle = not in_txn
                    self._maybe_feedback(now)
                    self._maybe_heartbeat(now)
                    wal_end = cur.wal_end
                    self._sent_lsn = max(self._sent_lsn, wal_end)
                    if not in_txn and wal_end > last_pos:
                        # Nothing published up to the server's sent position: let the caller confirm it,
                        # or an idle/filtered database makes the slot retain WAL forever.
                        last_pos = wal_end
                        last_yield = now
                        yield Chunk(commit=Commit(position=int_to_lsn(wal_end), ts=time.time()))
                        continue
                    if now - last_yield >= IDLE_TICK:
                        last_yield = now
                        yield Chunk()
                        continue
                    timeout = min(IDLE_TICK - (now - last_yield),
                                  self._last_heartbeat + self.config.heartbeat_seconds - now,
                                  self._last_feedback + self.config.status_interval_seconds - now)
                    select.select([repl], [], [], max(0.01, timeout))
                    continue
                buf = msg.payload
                k = buf[0]
                if k == 73 or k == 85 or k == 68:  # I U D
                    if not skip:
                        changes.append(decode_row(buf))
                        if len(changes) >= CHUNK_ROWS:
                            yield Chunk(changes=changes)
                            changes = []
                            self._housekeeping()
                elif k == 66:  # B
                    b = decode(buf)
                    in_txn = True
                    self._idle = False
                    # Commit record starting before the resume point ⇒ its end ≤ resume point: a duplicate.
                    skip = b.final_lsn < start  # type: ignore[union-attr]
                elif k == 67:  # C
                    c = decode(buf)
                    in_txn = False
                    self.last_commit_ts = c.ts  # type: ignore[union-attr]
                    if not skip and c.end_lsn > last_pos:  # type: ignore[union-attr]
                        last_pos = c.end_lsn  # type: ignore[union-attr]
                        chunk = Chunk(changes=changes,
                                      commit=Commit(int_to_lsn(last_pos), c.ts, dec.xid))  # type: ignore[union-attr]
                        changes = []
                        last_yield = time.monotonic()
                        yield chunk
                        self._housekeeping()
                    changes = []
                elif k == 84:  # T
                    rows = decode(buf)
                    if not skip:
                        changes.extend(rows)  # type: ignore[arg-type]
                else:  # Relation, Type, Origin, Message (heartbeats), stream control: state only
                    decode(buf)
        except psycopg2.Error as e:
            self._close_repl()
            raise ReplicationConnectionLost(
                f"replication connection to {self._where()} lost: {str(e).strip() or type(e).__name__}; "
                "unconfirmed changes will be re-read after restart") from e

    def _start_replication(self, start: int, from_position: str) -> tuple[Any, Any]:
        """The replication connection and its cursor, streaming pgoutput from ``start``."""
        repl = self._open_repl()
        cur = repl.cursor()
        pub = self.config.publication.replace('"', '""')
        try:
            cur.start_replication(
                slot_name=self.config.slot, decode=False, start_lsn=start,
                status_interval=max(1.0, self.config.status_interval_seconds),
                options={"proto_version": str(self.config.proto_version),
                         "publication_names": f'"{pub}"', "messages": "true"})
        except psycopg2.Error as e:
            self._close_repl()
            reason = (e.pgerror or str(e)).strip()
            if "is active for PID" in reason:  # our previous, killed process's walsender is still exiting
                raise ReplicationConnectionLost(f"slot {self.config.slot!r} still busy: {reason}") from None
            raise _driver_error(e)(f"could not start replication from slot {self.config.slot!r} at "
                                   f"{from_position}: {reason}") from None
        return repl, cur

    def _housekeeping(self) -> None:
        now = time.monotonic()
        self._maybe_feedback(now)
        self._maybe_heartbeat(now)

    def _maybe_feedback(self, now: float) -> None:
        if self._cur is None:
            return
        if now - self._last_feedback >= self.config.status_interval_seconds:
            self._send_feedback()
            self._last_feedback = now

    def _send_feedback(self) -> None:
        # Never beyond what the caller acked (psycopg2 keeps the max of what it was given).
        self._cur.send_feedback(write_lsn=self._acked, flush_lsn=self._acked, force=True)
        self._sent_ack = self._acked

    def _maybe_heartbeat(self, now: float) -> None:
        if now - self._last_heartbeat < self.config.heartbeat_seconds:
            return
        self._last_heartbeat = now
        # Transactional, so it arrives as Begin/Message/Commit with a confirmable commit position.
        try:
            self._q("SELECT pg_logical_emit_message(true, 'erpsync.heartbeat', now()::text)")
        except psycopg2.OperationalError:
            raise  # the server is gone: the read loop reports it
        except psycopg2.Error as e:
            # e.g. a permission problem: keepalive positions still advance the slot, so degrade, loudly.
            log.warning("heartbeat disabled: %s", (e.pgerror or str(e)).strip())
            self._last_heartbeat = float("inf")

    # -- ack / lag / misc ------------------------------------------------------------------------------
    def ack(self, position: str) -> None:
        self._acked = max(self._acked, lsn_to_int(position))

    def lag(self) -> dict[str, Any]:
        with self._unavailable():
            return self._lag()

    def _lag(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._lag_cache is None or now - self._lag_cache[0] >= 1.0:
            rows = self._q("SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::float8, "
                           "(pg_current_wal_lsn() - restart_lsn)::float8, wal_status, "
                           "(pg_current_wal_lsn() - '0/0'::pg_lsn)::float8 "
                           "FROM pg_replication_slots WHERE slot_name = %s", (self.config.slot,))
            b, r, st, cur = rows[0] if rows else (None, None, None, None)
            self._lag_cache = (now, {"bytes": float(b or 0), "retained_bytes": float(r or 0),
                                     "wal_status": st, "slot_exists": bool(rows),
                                     "unsent": max(0.0, float(cur or 0) - self._sent_lsn) if rows else 0.0})
        out = dict(self._lag_cache[1])
        # No message to read is not "caught up": while the server decodes a large transaction (or before
        # the first message after a restart) nothing arrives either. Caught up = nothing left unsent.
        caught_up = self._idle and min(out.pop("unsent"), out["bytes"]) < CAUGHT_UP_BYTES
        out["seconds"] = 0.0 if caught_up or not self.last_commit_ts else max(
            0.0, time.time() - self.last_commit_ts)
        return out

    def compare(self, a: str, b: str) -> int:
        x, y = lsn_to_int(a), lsn_to_int(b)
        return (x > y) - (x < y)

    def close(self) -> None:
        streaming = self._cur is not None
        try:
            if streaming:
                # psycopg2 alone would only send it at the next status interval
                with contextlib.suppress(psycopg2.Error):
                    self._send_feedback()
            self._close_repl()
            if self._acked and not streaming:
                # Acked without streaming (e.g. right after a snapshot): move the slot with SQL instead.
                s = self._slot()
                if s is not None and s[3] is None and s[1] and lsn_to_int(s[1]) < self._acked:
                    self._q("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                            (self.config.slot, int_to_lsn(self._acked)))
        except (psycopg2.Error, SourceError):
            pass
        finally:
            if self._side is not None:
                self._side.close()
                self._side = None
