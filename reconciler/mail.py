"""E-mail the report over SMTP: HTML inline (and attached, so it can be opened in a browser) plus the CSV."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path

from reconciler.config import EmailConfig


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


def send(cfg: EmailConfig, msg: EmailMessage) -> None:
    context = ssl.create_default_context()
    cls = smtplib.SMTP_SSL if cfg.ssl else smtplib.SMTP
    kw = {"context": context} if cfg.ssl else {}
    with cls(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds, **kw) as smtp:  # type: ignore[arg-type]
        if cfg.starttls and not cfg.ssl:
            smtp.starttls(context=context)
        if cfg.username:
            smtp.login(cfg.username, cfg.password.get_secret_value() if cfg.password else "")
        smtp.send_message(msg)
