"""What every command shares: the operator-facing failure, loading the config (secrets registered), JSON."""

from __future__ import annotations

import json
from typing import Any

import click

from erpsync.config import Config


class Fail(click.ClickException):
    """A failure with a message for the operator and an exit code (1 runtime, 2 config)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        from erpsync.logs import redact

        # not a log record, so the log filter never sees it: redact here too
        click.echo(f"error: {redact(self.format_message())}", err=True)


def load(config: str) -> Config:
    from erpsync.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise Fail(str(e), 2) from None
    return cfg  # its secrets are registered for redaction by load_config


def emit_json(obj: Any) -> None:
    from erpsync.logs import redact

    click.echo(redact(json.dumps(obj, default=str, indent=2)))


def check_mapping_or_fail(cfg: Config, where: str) -> None:
    """The mapping against the live ERP schema: exit 2 when it does not fit, 1 when the ERP is unreachable."""
    from erpsync.erpdb import ConnectError, SchemaError, check_mapping

    try:
        check_mapping(cfg)
    except SchemaError as e:
        raise Fail(f"{where}: {e}", 2) from None
    except ConnectError as e:
        raise Fail(f"{where}: {e}") from None
