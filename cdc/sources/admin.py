"""What every database's admin module (cdc/sources/<db>/admin.py) shares: doctor checks, the setup plan,
the ERP half of ``erpsync status`` and the typed errors of a plain SQL connection.

Checks never print secrets (SHOW GRANTS lines can carry password hashes, so only parsed privilege names
are reported). Setup SQL never prints the password: printable SQL carries a placeholder and applying it
binds the value read from an env var.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cdc.changes import SourceError, SourceMisconfigured, SourceUnavailable

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"  # doctor
STATUS_OK, STATUS_WARN, STATUS_FAIL = "ok", "warn", "fail"  # erpsync status
RETAINED_WARN_BYTES = 1 << 30  # above this the slot (or binlog backlog) is worth a look before the disk is


# -- errors of the plain SQL connection ------------------------------------------------------------------
class ConnectError(SourceError):
    """The plain (non-replication) SQL connection could not be opened. Raised as one of the two
    subclasses below, which carry the restart-or-stop type; the message never holds the DSN or password."""


class ConnectUnavailable(ConnectError, SourceUnavailable):
    """Refused, timed out, the server is starting up or shutting down: time fixes it."""


class ConnectMisconfigured(ConnectError, SourceMisconfigured):
    """Bad password or role, unknown database or host, no pg_hba entry...: a person must act."""


# Phrases of a connection failure only time fixes (refused, starting up, shutting down, lost) — the same
# list `run` waits on; a credentials problem never counts as transient.
_TRANSIENT = ("connection refused", "the database system is", "can't connect", "could not connect",
              "timeout expired", "timed out", "lost connection", "server closed the connection")


def is_transient(message: str) -> bool:
    m = message.lower()
    return any(t in m for t in _TRANSIENT) and "password" not in m and "access denied" not in m


def connect_error(message: str) -> ConnectError:
    """The typed error for a failed connect, by the driver's message."""
    return ConnectUnavailable(message) if is_transient(message) else ConnectMisconfigured(message)


def first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


# -- doctor ----------------------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None  # the exact SQL or config line that resolves a WARN/FAIL

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DoctorInput:
    """What the checks need besides the source settings (from the rest of the config)."""

    tables: list[str]  # fully qualified mapped tables
    outage_budget_hours: float = 24.0
    has_stock_key: bool = False  # stock.key is set (rows of a keyless table are keyed by it)
    origin: str = "<config>"  # the config file, for the fix lines


@dataclass
class Ctx:
    src: Any  # the source settings
    conn: Any  # DB-API connection
    inp: DoctorInput

    @property
    def tables(self) -> list[str]:
        return self.inp.tables

    def q(self, query: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall()) if cur.description else []

    def one(self, query: str, args: Any = None) -> Any:
        rows = self.q(query, args)
        return rows[0][0] if rows else None


CheckFn = Callable[[Ctx], Check]


def diagnose(src: Any, inp: DoctorInput, connect: Callable[[], Any], connect_fix: str,
             version: Callable[[Ctx], str], checks: list[CheckFn]) -> list[Check]:
    """Connect, then run every check; one broken check must not hide the others."""
    try:
        conn = connect()
    except ConnectError as e:
        return [Check("connect", FAIL, str(e), connect_fix)]
    ctx = Ctx(src, conn, inp)
    try:
        out = [Check("connect", PASS, f"connected to {version(ctx)}")]
        for fn in checks:
            try:
                out.append(fn(ctx))
            except Exception as e:
                name = fn.__name__.split("_", 1)[1].replace("_", " ")
                out.append(Check(name, WARN, f"could not check: {first_line(e)}"))
    finally:
        conn.close()
    return out


# -- setup -----------------------------------------------------------------------------------------------
PASSWORD_MARK = "\x00password\x00"  # where the secret goes; replaced by a placeholder or a bound parameter


class SetupError(Exception):
    """``erpsync setup`` cannot go on; the message says why (never with a secret)."""


@dataclass
class Statement:
    sql: str  # may contain PASSWORD_MARK
    note: str = ""  # why, printed as a comment

    def printable(self, placeholder: str) -> str:
        text = self.sql.replace(PASSWORD_MARK, placeholder) + ";"
        return f"{text}  -- {self.note}" if self.note else text

    def executable(self, secret: str | None) -> tuple[str, tuple[Any, ...] | None]:
        """For a DB-API driver with %s parameters (psycopg2, PyMySQL)."""
        if PASSWORD_MARK not in self.sql:
            return self.sql, None
        if secret is None:
            raise ValueError("a password is needed for this statement")
        return self.sql.replace("%", "%%").replace(PASSWORD_MARK, "%s"), (secret,)


@dataclass
class Plan:
    role: str
    password_env: str
    placeholder: str  # what the printed SQL shows in place of the password
    header: list[str] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)

    def render(self) -> str:
        out = [f"-- {line}" for line in self.header]
        out += [s.printable(self.placeholder) for s in self.statements]
        out += [f"-- {line}" for line in self.footer]
        return "\n".join(out) + "\n"


def apply_plan(plan: Plan, conn: Any) -> list[str]:
    """Run the plan's statements on an admin connection (autocommit); returns the printable forms."""
    secret = os.environ.get(plan.password_env)
    done = []
    with conn.cursor() as cur:
        for st in plan.statements:
            q, args = st.executable(secret)
            cur.execute(q, args)
            done.append(st.printable("<redacted>"))
    return done


@dataclass
class SetupRequest:
    """The options of ``erpsync setup``."""

    tables: list[str]
    role: str | None
    password_env: str
    host: str = "%"  # MySQL: the account's host part
    admin_dsn: str | None = None
    admin_dsn_env: str | None = None
    apply: bool = False


# -- status ----------------------------------------------------------------------------------------------
@dataclass
class ErpStatus:
    """The ERP half of ``erpsync status``: facts for --json, the lag, and (name, level, detail) checks."""

    info: dict[str, Any]
    lag_bytes: int | None = None
    checks: list[tuple[str, str, str]] = field(default_factory=list)


__all__ = [
    "FAIL", "PASS", "PASSWORD_MARK", "RETAINED_WARN_BYTES", "STATUS_FAIL", "STATUS_OK", "STATUS_WARN", "WARN",
    "Check", "CheckFn", "ConnectError", "ConnectMisconfigured", "ConnectUnavailable", "Ctx", "DoctorInput",
    "ErpStatus", "Plan", "SetupError", "SetupRequest", "Statement", "apply_plan", "connect_error", "diagnose",
    "first_line", "is_transient"]
