"""erpsync: the application layer (CLI, pipeline wiring, ops) and the contracts shared by all layers.

Keep this module import-free: ``cdc`` and ``sinks`` import ``erpsync.facts`` and must not drag in the CLI.
"""

__version__ = "0.1.0"
