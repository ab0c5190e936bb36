"""The outbox: the only code that runs SQL on its tables."""
