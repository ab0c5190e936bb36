"""The ``erpsync`` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad usage / config / schema.

One module per command group; this one only assembles them."""

from __future__ import annotations

import click

from erpsync import __version__
from erpsync.cli.config_cmd import config_group
from erpsync.cli.erp import doctor, setup, status, teardown
from erpsync.cli.outbox import dlq, snapshot
from erpsync.cli.reconcile import reconcile
from erpsync.cli.run import run, worker
from erpsync.cli.tools import demo, emulate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="erpsync")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default="auto", show_default=True, type=click.Choice(["auto", "json", "text"]),
              help="auto: JSON lines unless stderr is a terminal")
def main(log_level: str, log_format: str) -> None:
    """erpsync: stream ERP stock and prices to online shops, in near real time."""
    from erpsync.logs import setup as setup_logs

    setup_logs(log_level, log_format)


for command in (run, worker, demo, emulate, snapshot, dlq, config_group, status, doctor, setup, teardown,
                reconcile):
    main.add_command(command)
