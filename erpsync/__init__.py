"""erpsync: the application layer (CLI, pipeline wiring, supervisor, delivery, ops, demo). It stands on
``reconciler``, ``sinks`` and ``cdc`` (where the contracts every layer shares live); nothing imports it back.

Keep this module import-free: importing the package must not drag in the CLI.
"""

__version__ = "0.1.0"
