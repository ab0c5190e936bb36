"""``erpsync config validate | schema``."""

from __future__ import annotations

import json

import click

from erpsync.cli.common import check_mapping_or_fail, load


@click.group("config")
def config_group() -> None:
    """Validate a config file or print its JSON Schema."""


@config_group.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--offline", is_flag=True, help="do not check against the live ERP schema")
def config_validate(file: str, offline: bool) -> None:
    """Check FILE (and, unless --offline, its mapping against the live ERP schema); dangerous but accepted
    settings are printed as warnings (on stderr: the OK line stays the last word on stdout)."""
    from erpsync.logs import redact

    cfg = load(file)
    warnings = cfg.config_warnings()
    for w in warnings:
        click.echo(f"warning: {redact(w)}", err=True)
    if not offline:
        check_mapping_or_fail(cfg, file)
    click.echo(f"{file}: OK" + (" (not checked against the ERP)" if offline else "")
               + (f", {len(warnings)} warning(s)" if warnings else ""))


@config_group.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config file (for editors)."""
    from erpsync.config import Config

    click.echo(json.dumps(Config.model_json_schema(), indent=2))



