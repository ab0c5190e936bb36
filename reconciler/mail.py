"""E-mail the report over SMTP: HTML inline (and attached, so it can be opened in a browser) plus the CSV.

TLS is the default and is verified (certificate chain against the system CA store or ``ca_file``, and the
host name): implicit TLS on port 465, a required STARTTLS upgrade elsewhere — a server that does not offer
STARTTLS gets nothing, neither the password nor the report. Cleartext is an explicit choice
(``starttls: false``); the password goes over it only with ``allow_cleartext_password``, and both are
warned about."""

from __future__ import annotations

import ipaddress
import logging
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path

from reconciler.config import EmailConfig

log = logging.getLogger("erpsync.reconcile")


class MailSecurityError(Exception):
    """The report was not sent because the connection to the SMTP server could not be secured."""


def build_message(cfg: EmailConfig, subject: str, text: str, html_path: Path, csv_path: Path) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = cfg.from_
    msg["To"] = ", ".join(cfg.to)
    msg.set_content(text)
    body = html_path.read_text(encoding="utf-8")
    msg.add_alternative(body, subtype="html")
    msg.add_attachment(body.encode(), maintype="text", subtype="html", filename=html_path.name)
    msg.add_attachment(csv_path.read_bytes(), maintype="text", subtype="csv", filename=csv_path.name)
    return msg


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (the only places cleartext SMTP goes without a warning)."""
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cleartext_warnings(cfg: EmailConfig) -> list[str]:
    """What is wrong with a cleartext configuration (none for TLS, nor for a relay on loopback)."""
    if cfg.tls != "none":
        return []
    where = f"{cfg.smtp_host}:{cfg.smtp_port}"
    out = []
    if cfg.username:
        out.append(f"SMTP: sending the password for {cfg.username!r} to {where} in cleartext "
                   "(allow_cleartext_password is set); anyone on the network path can read it")
    if not is_loopback(cfg.smtp_host):
        out.append(f"SMTP: the report goes to {where} in cleartext (starttls: false) — enable TLS unless "
                   "the network path is trusted")
    return out


def tls_context(cfg: EmailConfig) -> ssl.SSLContext:
    """A client context verifying the chain (system CAs, or only ``ca_file``) and the host name."""
    ctx = ssl.create_default_context(cafile=cfg.ca_file) if cfg.ca_file else ssl.create_default_context()
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _tls_failure(cfg: EmailConfig, e: ssl.SSLError) -> MailSecurityError:
    where = f"{cfg.smtp_host}:{cfg.smtp_port}"
    if isinstance(e, ssl.SSLCertVerificationError):
        why = e.verify_message or e.reason or "verification failed"
        if "mismatch" in str(why).lower():
            hint = "the certificate is for another name: set smtp_host to a name it covers"
        elif cfg.ca_file:
            hint = "no CA in ca_file signed it"
        else:
            hint = "set ca_file to the CA bundle that signed it"
        return MailSecurityError(f"SMTP server {where}: TLS certificate verification failed ({why}); "
                                 f"nothing was sent ({hint})")
    return MailSecurityError(f"SMTP server {where}: TLS handshake failed ({e.reason or e}); nothing was sent")


def _connect(cfg: EmailConfig) -> smtplib.SMTP:
    """An SMTP connection protected as ``cfg.tls`` says, or MailSecurityError before anything is sent."""
    where = f"{cfg.smtp_host}:{cfg.smtp_port}"
    if cfg.tls == "none":
        if cfg.username and not cfg.allow_cleartext_password:  # the config refuses this too
            raise MailSecurityError(f"SMTP server {where}: refusing to send the password in cleartext "
                                    "(enable TLS, or set allow_cleartext_password)")
        for w in cleartext_warnings(cfg):
            log.warning("%s", w)
        return smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds)
    ctx = tls_context(cfg)
    try:
        if cfg.tls == "implicit":
            return smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds, context=ctx)
        smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds)
    except ssl.SSLError as e:
        raise _tls_failure(cfg, e) from None
    try:
        smtp.ehlo()
        if not smtp.has_extn("starttls"):
            raise MailSecurityError(
                f"SMTP server {where} does not offer STARTTLS: refusing to send the password and the report "
                "in cleartext (use a server with TLS, ssl: true for implicit TLS on port 465, or "
                "starttls: false for a trusted relay)")
        smtp.starttls(context=ctx)
    except ssl.SSLError as e:
        smtp.close()
        raise _tls_failure(cfg, e) from None
    except BaseException:
        smtp.close()
        raise
    return smtp


def send(cfg: EmailConfig, msg: EmailMessage) -> None:
    """Deliver ``msg``; raises MailSecurityError (nothing sent) when the connection cannot be secured."""
    with _connect(cfg) as smtp:
        if cfg.username:
            smtp.login(cfg.username, cfg.password.get_secret_value() if cfg.password else "")
        smtp.send_message(msg)
