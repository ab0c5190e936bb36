"""What every database's admin module (cdc/sources/<db>/admin.py) shares: doctor checks, the setup plan,
the ERP half of ``erpsync status`` and the typed errors of a plain SQL connection.

Checks never print secrets (SHOW GRANTS lines can carry password hashes, so only parsed privilege names
are reported). Setup SQL never prints the password: printable SQL carries a placeholder and applying it
binds the value read from an env var.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cdc.changes import SourceError, SourceMisconfigured, SourceUnavailable

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"  # doctor
STATUS_OK, STATUS_WARN, STATUS_FAIL = "ok", "warn", "fail"  # erpsync status
RETAINED_WARN_BYTES = 1 << 30  # above this the slot (or binlog backlog) is worth a look before the disk is


MIN_HEARTBEAT_SECONDS = 0.5  # each heartbeat is an ERP transaction (PostgreSQL) or a server packet (MySQL)


# -- TLS to the ERP ----------------------------------------------------------------------------------------
class TlsConfig(BaseModel):
    """``source.tls``: encrypt the ERP connection and (``verify``, the default) check the server's
    certificate against ``ca_file`` (or the system's CAs) and its host name."""

    model_config = ConfigDict(extra="forbid")

    ca_file: str | None = Field(None, description="PEM file of the CA that signed the ERP's certificate")
    verify: bool = Field(True, description="check the certificate chain and the host name")

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not Path(v).is_file():
            raise ValueError(f"no such file: {v} (the CA certificate, PEM)")
        try:
            ssl.create_default_context(cafile=v)
        except (ssl.SSLError, OSError) as e:
            raise ValueError(f"{v} is not a readable PEM CA certificate ({e.__class__.__name__})") from None
        return v

    def context(self) -> ssl.SSLContext:
        """A client context: the CA (or the system's); unless ``verify`` is off, name and chain checked."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def is_loopback(host: str | None) -> bool:
    """A Unix socket, localhost or a loopback address: traffic that never leaves the machine."""
    if not host or host.startswith("/") or host.startswith("@") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_check(state: str, host: str | None, detail: str) -> Check:
    """The doctor's TLS check: state is "verified", "unverified" or "cleartext"."""
    fix = "source.tls: {ca_file: /path/to/erp-ca.pem, verify: true}  (in the erpsync config)"
    if state == "verified":
        return Check("tls", PASS, f"TLS: verified ({detail})")
    if state == "unverified":
        return Check("tls", WARN, f"TLS: unverified ({detail}): the server's certificate is not checked, "
                     "so anyone in the path can pose as the ERP", fix)
    if is_loopback(host):
        return Check("tls", PASS, f"TLS: cleartext ({detail}; loopback host {host or 'local socket'})")
    return Check("tls", WARN, f"TLS: cleartext ({detail}) to non-loopback host {host}: the ERP password "
                 "and every row cross the network readable", fix)


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
    return (any(t in m for t in _TRANSIENT) and "password" not in m and "access denied" not in m
            and not is_tls_failure(m))


def is_tls_failure(message: str) -> bool:
    """The TLS handshake or the certificate check failed: a person must fix the CA or the server."""
    m = message.lower()
    return any(t in m for t in ("certificate", "ssl", "tls", "wrong version number"))


def connect_error(message: str) -> ConnectError:
    """The typed error for a failed connect, by the driver's message."""
    return ConnectUnavailable(message) if is_transient(message) else ConnectMisconfigured(message)


def first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def dsn_syntax_problem(message: str) -> str:
    """What is wrong with a DSN, from the driver's parse error, without the fragment of the DSN it quotes
    (which may be a piece of the password)."""
    m = message.lower()
    if "percent" in m or "%" in m:
        why = "a bad %-escape in the URI (write a literal % as %25)"
    elif 'missing "="' in m:
        why = "a word without \"=\" (quote a value holding spaces: password='...')"
    elif "unterminated quoted string" in m:
        why = "an unterminated quoted value"
    elif "invalid connection option" in m:
        why = "an unknown connection option"
    elif "uri" in m:
        why = "a malformed URI"
    else:
        why = re.sub(r'"[^"]*"|\'[^\']*\'', "...", first_line(Exception(message)))
    return f"not a valid connection string: {why}"


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
    adopt_role: bool = False  # take over an existing role/user erpsync did not create (changes its password)


# -- status ----------------------------------------------------------------------------------------------
@dataclass
class ErpStatus:
    """The ERP half of ``erpsync status``: facts for --json, the lag, and (name, level, detail) checks."""

    info: dict[str, Any]
    lag_bytes: int | None = None
    checks: list[tuple[str, str, str]] = field(default_factory=list)


__all__ = [
    "FAIL", "MIN_HEARTBEAT_SECONDS", "PASS", "PASSWORD_MARK", "RETAINED_WARN_BYTES", "STATUS_FAIL",
    "STATUS_OK", "STATUS_WARN", "WARN", "Check", "CheckFn", "ConnectError", "ConnectMisconfigured",
    "ConnectUnavailable", "Ctx", "DoctorInput", "ErpStatus", "Plan", "SetupError", "SetupRequest",
    "Statement",
    "TlsConfig", "apply_plan", "connect_error", "diagnose", "dsn_syntax_problem", "first_line", "is_loopback",
    "is_tls_failure", "is_transient", "tls_check"]
