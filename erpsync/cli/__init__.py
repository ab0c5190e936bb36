"""The ``erpsync`` command line (see main.py)."""

from erpsync.cli.main import main

__all__ = ["main"]
