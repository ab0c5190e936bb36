"""Security checks: TLS verified by default, secrets never printed, ops endpoint on loopback, SQL built from
config quoted (a quote in a table name does not inject)."""

from __future__ import annotations

import sqlite3
import ssl
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from cdc.facts import stock_fact
from cdc.outbox.queue import SinkQueue
from cdc.outbox.store import Outbox
from erpsync.cli import main
from erpsync.config import OpsConfig, load_config_text
from sinks.base import Outcome
from sinks.config import WebhookSinkConfig
from sinks.emulators.base import Response
from sinks.emulators.webhook import WebhookEmulator
from sinks.webhook import WebhookSink
from tests.erp import PostgresErp


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["--log-format", "text", *args])
    return r.exit_code, r.output


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=erpsync test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return ca, cert, key


def test_tls_is_verified_by_default_and_ca_file_makes_it_pass(tmp_path: Path) -> None:
    ca, cert, key = make_certs(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    shop = WebhookEmulator()
    shop.start(ssl_context=ctx)
    try:
        assert shop.endpoint.startswith("https://127.0.0.1:")
        fact = stock_fact("SKU-1", "madrid", 3, version=1)
        strict = WebhookSink(WebhookSinkConfig(name="shop", url=shop.endpoint))
        assert strict.cfg.verify_tls is True  # the default
        [r] = strict.push([fact])
        strict.close()
        assert r.outcome is Outcome.RETRY  # kept in the outbox, never dropped
        assert "TLS certificate verification failed" in r.message and "ca_file" in r.message
        assert shop.stock() == {}
        trusting = WebhookSink(WebhookSinkConfig(name="shop", url=shop.endpoint, ca_file=str(ca)))
        [r] = trusting.push([fact])
        trusting.close()
        assert r.outcome is Outcome.OK, r.message
        assert shop.stock() == {("SKU-1", "madrid"): 3}
    finally:
        shop.stop()


def test_ops_endpoint_and_emulator_default_to_loopback() -> None:
    assert OpsConfig().listen.startswith("127.0.0.1:")
    emulate = main.commands["emulate"]
    host = next(p for p in emulate.params if p.name == "host")
    assert host.default == "127.0.0.1"


def test_secret_in_wrongly_typed_config_value_is_not_echoed(tmp_path: Path) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({
        "source": {"kind": "postgres", "dsn": "host=x", "slot": ["not", "a", token]},
        "stock": {"table": "t", "sku": "sku", "warehouse": "w", "quantity": "q"},
        "sinks": [{"name": "s", "kind": "webhook", "url": "http://x", "timeout_seconds": token}]}))
    code, out = cli("config", "validate", "--offline", str(p))
    assert code == 2
    assert "source.slot" in out and "sinks[0].timeout_seconds" in out
    assert token not in out


def test_shop_error_echoing_the_secret_is_redacted_in_dlq_list(tmp_path: Path) -> None:
    """Some shops echo request headers in error bodies: the dead-letter text must not print the secret."""
    secret = f"hook-{uuid.uuid4().hex}"

    class Echo(WebhookEmulator):
        def handle(self, req):  # type: ignore[no-untyped-def]
            sig = req.headers.get("x-erpsync-signature")
            return Response(400, {"error": f"bad request, signature {sig}, secret {secret}"})

    shop = Echo()
    shop.start()
    try:
        outbox = tmp_path / "outbox.db"
        cfg = {"source": {"kind": "postgres", "dsn": "host=127.0.0.1"},
               "stock": {"table": "t", "sku": "sku", "warehouse": "w", "quantity": "q",
                         "locations": {"W": "m"}},
               "sinks": [{"name": "shop", "kind": "webhook", "url": shop.endpoint,
                          "secret": "${HOOK_SECRET}"}],
               "outbox": {"path": str(outbox)}}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        ob = Outbox(outbox, {"shop": ["stock"]})
        ob.begin()
        ob.write_facts([stock_fact("SKU-1", "madrid", 3)])
        ob.commit()
        ob.close()
        sink = WebhookSink(WebhookSinkConfig(name="shop", url=shop.endpoint, secret=secret))
        q = SinkQueue(outbox, "shop")
        [p] = q.next_batch(10)
        [r] = sink.push([p.fact])
        assert r.outcome is Outcome.PERMANENT and secret in r.message  # the shop really echoed it
        q.mark_dead([(p.fact, 1, r.message)])
        q.close()
        sink.close()
        import os

        os.environ["HOOK_SECRET"] = secret
        try:
            code, out = cli("dlq", "list", "--config", str(path))
            code_j, out_j = cli("dlq", "list", "--json", "--config", str(path))
        finally:
            del os.environ["HOOK_SECRET"]
        assert code == 0 and code_j == 0, out + out_j
        assert "SKU-1" in out and "SKU-1" in out_j
        assert secret not in out and secret not in out_j
    finally:
        shop.stop()


@pytest.mark.parametrize("table", ['stock_levels"; DROP TABLE canary; --',
                                   "stock_levels'; DROP TABLE canary; --"])
def test_table_name_with_a_quote_does_not_inject(pg_dsn: str, tmp_path: Path, table: str) -> None:
    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    erp.execute("CREATE TABLE canary (x int)")
    cfg = yaml.safe_load(Path(erp.config(tmp_path, "http://127.0.0.1:9/hook")).read_text())
    cfg["stock"]["table"] = f"public.{table}"
    path = tmp_path / "inj.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        code, out = cli("config", "validate", str(path))
        assert code == 2 and "stock.table" in out, out
        from cdc.mapping.snapshot_sql import facts_select

        sql = facts_select(load_config_text(path.read_text(), str(path)), "postgres")["stock"]
        # the snapshot SELECT names one odd table; it injects nothing
        with erp.conn.cursor() as cur, pytest.raises(Exception, match="does not exist"):
            cur.execute(sql)
        assert erp.query("SELECT count(*) FROM canary") == [(0,)]
    finally:
        erp.close()


def test_outbox_identifiers_from_config_are_bound_not_formatted(tmp_path: Path) -> None:
    """A sink name is a value in the outbox's SQL (bound), never part of the statement."""
    ob = Outbox(tmp_path / "o.db", {"x'); DROP TABLE facts; --": ["stock"]})
    ob.begin()
    ob.write_facts([stock_fact("A", "m", 1)])
    ob.commit()
    ob.close()
    conn = sqlite3.connect(tmp_path / "o.db")
    assert conn.execute("SELECT count(*) FROM facts").fetchone() == (1,)
    assert conn.execute("SELECT sink FROM deliveries").fetchone() == ("x'); DROP TABLE facts; --",)


# SMTP: verified TLS by default, the password never in cleartext ------------------------------------------
SMTP_PASSWORD = f"smtp-{uuid.uuid4().hex}"


class _Smtp:
    """A real SMTP server on loopback (aiosmtpd) that records logins and messages; with ``tls`` it offers
    STARTTLS, without it it offers AUTH in cleartext (a server that would capture the password)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        import socket

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.logins: list[tuple[bytes, bytes]] = []
        self.messages: list[bytes] = []

        def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
            self.logins.append((auth_data.login, auth_data.password))
            return AuthResult(success=True)

        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
                outer.messages.append(envelope.content)
                return "250 OK"

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        kw = {"tls_context": tls} if tls else {}
        self.ctl = Controller(Handler(), hostname="127.0.0.1", port=self.port, authenticator=authenticator,
                              auth_require_tls=tls is not None, **kw)
        self.ctl.start()

    def stop(self) -> None:
        self.ctl.stop()


def _server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def _email_cfg(port: int, **kw: object):  # type: ignore[no-untyped-def]
    from reconciler.config import EmailConfig

    return EmailConfig.model_validate({"to": ["merch@example.com"], "from": "erpsync@example.com",
                                       "smtp_host": "127.0.0.1", "smtp_port": port, "username": "merch",
                                       "password": SMTP_PASSWORD, **kw})


def _msg():  # type: ignore[no-untyped-def]
    from email.message import EmailMessage

    m = EmailMessage()
    m["Subject"], m["From"], m["To"] = "drift", "erpsync@example.com", "merch@example.com"
    m.set_content("report")
    return m


def test_smtp_without_starttls_gets_neither_the_password_nor_the_report(caplog: pytest.LogCaptureFixture
                                                                        ) -> None:
    from reconciler import mail

    server = _Smtp()  # offers AUTH, not STARTTLS
    try:
        cfg = _email_cfg(server.port)  # the defaults: nothing about TLS in the config
        with pytest.raises(Exception, match="does not offer STARTTLS") as err:
            mail.send(cfg, _msg())
        assert "refusing" in str(err.value) and f"127.0.0.1:{server.port}" in str(err.value)
        assert server.logins == [] and server.messages == []
        assert SMTP_PASSWORD not in str(err.value) and SMTP_PASSWORD not in caplog.text
    finally:
        server.stop()


def test_smtp_cleartext_password_needs_an_explicit_opt_in_that_warns(caplog: pytest.LogCaptureFixture
                                                                     ) -> None:
    from pydantic import ValidationError

    from reconciler import mail

    with pytest.raises(ValidationError, match="cleartext") as err:
        _email_cfg(25, starttls=False)  # TLS off, password set, no opt-in: refused at config load
    assert "allow_cleartext_password" in str(err.value) and SMTP_PASSWORD not in str(err.value)
    server = _Smtp()
    try:
        cfg = _email_cfg(server.port, starttls=False, allow_cleartext_password=True)
        with caplog.at_level("WARNING", logger="erpsync.reconcile"):
            mail.send(cfg, _msg())
        assert server.logins == [(b"merch", SMTP_PASSWORD.encode())] and len(server.messages) == 1
        assert "password" in caplog.text and "cleartext" in caplog.text
        assert SMTP_PASSWORD not in caplog.text
    finally:
        server.stop()


def test_smtp_cleartext_warns_for_a_remote_host_not_for_loopback() -> None:
    from reconciler.config import EmailConfig
    from reconciler.mail import cleartext_warnings

    def cfg(host: str, **kw: object) -> EmailConfig:
        return EmailConfig.model_validate({"to": ["m@example.com"], "smtp_host": host, **kw})

    assert cfg("smtp.example.com").tls == "starttls"
    assert cfg("smtp.example.com", smtp_port=465).tls == "implicit"
    assert cleartext_warnings(cfg("smtp.example.com")) == []  # TLS: nothing to warn about
    for host in ("localhost", "127.0.0.1", "::1"):
        assert cleartext_warnings(cfg(host, starttls=False)) == [], host
    [w] = cleartext_warnings(cfg("smtp.example.com", starttls=False))
    assert "cleartext" in w and "smtp.example.com:25" in w


def test_smtp_starttls_verifies_the_certificate_and_host_name(tmp_path: Path) -> None:
    from reconciler import mail

    ca, cert, key = make_certs(tmp_path)
    own = tmp_path / "self"
    own.mkdir()
    self_key, self_cert = own / "k.pem", own / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self_key),
                    "-out", str(self_cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = _Smtp(_server_tls(self_cert, self_key))  # self-signed, not in the CA file
    try:
        for extra in ({"ca_file": str(ca)}, {}):  # the test CA, then the system store
            with pytest.raises(Exception, match="TLS certificate verification failed") as err:
                mail.send(_email_cfg(server.port, **extra), _msg())
            assert "nothing was sent" in str(err.value) and SMTP_PASSWORD not in str(err.value)
        assert server.logins == [] and server.messages == []
    finally:
        server.stop()
    server = _Smtp(_server_tls(cert, key))  # signed by the test CA, for 127.0.0.1 only
    try:
        with pytest.raises(Exception, match="TLS certificate verification failed"):
            mail.send(_email_cfg(server.port, ca_file=str(ca), smtp_host="localhost"), _msg())  # wrong name
        assert server.logins == []
        mail.send(_email_cfg(server.port, ca_file=str(ca)), _msg())
        assert server.logins == [(b"merch", SMTP_PASSWORD.encode())] and len(server.messages) == 1
    finally:
        server.stop()


def test_smtp_implicit_tls_is_verified(tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    from reconciler import mail

    ca, cert, key = make_certs(tmp_path)
    got: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            got.append(envelope.content)
            return "250 OK"

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port, ssl_context=_server_tls(cert, key))
    ctl.start()
    try:
        bare = {"username": None, "password": None, "ssl": True}
        with pytest.raises(Exception, match="TLS certificate verification failed"):
            mail.send(_email_cfg(port, **bare), _msg())  # the system store does not know the test CA
        assert got == []
        mail.send(_email_cfg(port, ca_file=str(ca), **bare), _msg())
        assert len(got) == 1
    finally:
        ctl.stop()


# Webhook signatures: a captured push cannot be replayed (issue 15, item 11) -------------------------------
def _signed_push_recorder(sink: WebhookSink) -> list[httpx.Request]:
    sent: list[httpx.Request] = []
    sink.client.event_hooks["request"].append(sent.append)
    return sent


def _replay(req: httpx.Request) -> httpx.Response:
    return httpx.post(str(req.url), content=req.content, headers=dict(req.headers))


def test_replayed_webhook_push_is_refused_by_the_reference_receiver() -> None:
    """The incident: an old signed push (50 in stock) replayed after the newer one (sold out)."""
    secret = f"hook-{uuid.uuid4().hex}"
    shop = WebhookEmulator(secret=secret)
    shop.start()
    sink = WebhookSink(WebhookSinkConfig(name="shop", url=shop.endpoint, secret=secret))
    try:
        sent = _signed_push_recorder(sink)
        [r1] = sink.push([stock_fact("SKU-1", "madrid", 50, version=1)])
        [r2] = sink.push([stock_fact("SKU-1", "madrid", 0, version=2)])
        assert r1.outcome is Outcome.OK and r2.outcome is Outcome.OK
        assert shop.stock() == {("SKU-1", "madrid"): 0}
        old = _replay(sent[0])
        assert old.status_code == 409, old.text  # the same webhook-id again: a replay
        assert shop.stock() == {("SKU-1", "madrid"): 0}  # still sold out
    finally:
        sink.close()
        shop.stop()


def test_webhook_signature_binds_id_timestamp_and_body() -> None:
    import time

    from sinks.webhook import sign, signed_headers

    secret = f"hook-{uuid.uuid4().hex}"
    shop = WebhookEmulator(secret=secret)
    shop.start()
    body = b'{"facts":[{"kind":"stock","sku":"SKU-1","location":"madrid","available":50,"version":1}]}'
    key = secret.encode()
    try:
        def post(headers: dict[str, str], content: bytes = body) -> int:
            return httpx.post(shop.endpoint, content=content, headers=headers).status_code

        stale = int(time.time()) - 600  # signed correctly, 10 minutes ago (outside the 5-minute tolerance)
        assert post({"webhook-id": "msg_a", "webhook-timestamp": str(stale),
                     "webhook-signature": sign(key, "msg_a", stale, body)}) == 401
        h = signed_headers(key, body)
        assert post({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}) == 401  # moved
        assert post({**h, "webhook-id": "msg_other"}) == 401  # another id
        assert post(h, body.replace(b"50", b"51")) == 401  # another body
        assert post({**h, "webhook-signature": sign(b"wrong-key", h["webhook-id"],
                                                    int(h["webhook-timestamp"]), body)}) == 401
        assert post(h) == 200 and shop.stock() == {("SKU-1", "madrid"): 50}
        assert post(h) == 409  # and only once
    finally:
        shop.stop()


def test_readme_verify_snippet_accepts_a_push_once(tmp_path: Path) -> None:
    """The 5-line receiver check of README.md's "Webhook signatures" verifies what the sink sends."""
    import base64
    import hashlib
    import hmac
    import time
    from collections.abc import Callable

    from sinks.webhook import signed_headers

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    snippet = readme.split("**Webhook signatures**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, object] = {"base64": base64, "hashlib": hashlib, "hmac": hmac, "time": time}
    exec(snippet, scope)  # the project's own README
    verify: Callable[..., bool] = scope["verify"]  # type: ignore[assignment]
    body, seen = b'{"facts":[]}', set[str]()
    h = signed_headers(b"k3y-readme", body)
    assert verify(b"k3y-readme", h, body, seen) is True
    assert verify(b"k3y-readme", h, body, seen) is False  # a replay
    assert verify(b"other-key", signed_headers(b"k3y-readme", body), body, set()) is False
    stale = signed_headers(b"k3y-readme", body, now=time.time() - 301)
    assert verify(b"k3y-readme", stale, body, set()) is False


def test_outbox_and_history_files_are_private(tmp_path: Path) -> None:
    """Created 0600 (directories 0700) whatever the umask: the outbox with its -wal and -shm, the history."""
    import os

    import duckdb

    from reconciler.history import attach, record

    old = os.umask(0o022)
    try:
        ob = Outbox(tmp_path / "state" / "outbox.db", {"shop": ["stock"]})
        ob.begin()
        ob.write_facts([stock_fact("A", "m", 1)])
        ob.commit()
        files = [tmp_path / "state" / n for n in ("outbox.db", "outbox.db-wal", "outbox.db-shm")]
        modes = {f.name: oct(f.stat().st_mode & 0o777) for f in files}  # all three exist while open
        ob.close()
        con = duckdb.connect()
        con.execute("CREATE TABLE drift (sink VARCHAR, drift VARCHAR, fact_kind VARCHAR, sku VARCHAR, "
                    "scope VARCHAR, erp_value DECIMAL(38,4), shop_value DECIMAL(38,4), severity DOUBLE, "
                    "note VARCHAR)")
        hist = tmp_path / "hist" / "runs.duckdb"
        attach(con, hist)
        record(con, 1, [{"sink": "shop", "error": "x"}])
        con.close()
    finally:
        os.umask(old)
    assert modes == dict.fromkeys(modes, "0o600"), modes
    assert hist.stat().st_mode & 0o777 == 0o600, oct(hist.stat().st_mode)
    for d in (tmp_path / "state", tmp_path / "hist"):
        assert d.stat().st_mode & 0o777 == 0o700, (d, oct(d.stat().st_mode))


def test_text_logs_cannot_be_forged_with_newlines_from_shop_data() -> None:
    import logging

    from erpsync.logs import TextFormatter, fields

    forged = "12:00:00 ERROR   erpsync: forged"
    rec = logging.LogRecord("erpsync.delivery", logging.WARNING, __file__, 1, "push of %s refused: %s",
                            ("SKU-1\r\n" + forged, "bad\x1b[2J\x1b]0;title\x07\x9b31m"), None)
    rec.fields = fields(sku="A\n" + forged)["fields"]  # type: ignore[attr-defined]
    try:
        raise ValueError("shop said\n" + forged)
    except ValueError:
        import sys

        rec.exc_info = sys.exc_info()
    out = TextFormatter().format(rec)
    first, *rest = out.split("\n")
    assert "forged" in first and "\\n" in first and "\\r" in first
    assert rest and all(line.startswith("  ") for line in rest), out  # the traceback, indented
    assert not any(c in out for c in "\r\x1b\x07\x9b"), repr(out)


def test_dlq_list_and_status_neutralise_terminal_escapes(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A SKU and a shop error with ESC sequences, CR, BEL, C1 CSI and newlines: `dlq list` and `status`
    print them escaped, one line per dead letter."""
    sku = "SKU-\x1b[31mRED\x1b[0m"
    error = "HTTP 400: bad\r\x1b]0;pwned\x07 \x9b2J\nerror: forged line"
    outbox = tmp_path / "outbox.db"
    cfg = {"source": {"kind": "postgres", "dsn": "host=127.0.0.1"},
           "stock": {"table": "t", "sku": "sku", "warehouse": "w", "quantity": "q", "locations": {"W": "m"}},
           "sinks": [{"name": "shop", "kind": "webhook", "url": "http://127.0.0.1:9/hook",
                      "secret": "${HOOK_SECRET}"}],
           "outbox": {"path": str(outbox)}}
    monkeypatch.setenv("HOOK_SECRET", f"hook-{uuid.uuid4().hex}")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ob = Outbox(outbox, {"shop": ["stock"]})
    ob.begin()
    ob.write_facts([stock_fact(sku, "m", 3), stock_fact("SKU-2", "m", 1)])
    ob.commit()
    ob.close()
    q = SinkQueue(outbox, "shop")
    p1, p2 = sorted(q.next_batch(10), key=lambda p: p.fact.sku)
    q.mark_dead([(p1.fact if p1.fact.sku == sku else p2.fact, 1, error)])
    q.mark_retry([(p2.fact if p1.fact.sku == sku else p1.fact, 1, 0.0, error)])
    q.close()
    code, out = cli("dlq", "list", "--config", str(path))
    assert code == 0 and "RED" in out and "forged line" in out, out
    assert len(out.strip().splitlines()) == 1, out
    _, out_s = cli("status", "--no-erp", "--config", str(path))
    assert "forged line" in out_s, out_s
    assert not any(line.startswith("error: forged") for line in out_s.splitlines()), out_s
    for text in (out, out_s):
        assert not any(c in text for c in "\r\x1b\x07\x9b"), repr(text)
