"""Row changes → facts: row state, stock, prices and lookups."""
