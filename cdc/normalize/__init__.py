"""Row changes → facts: the composite Normalizer (normalizer.py) delegates each table's changes to its
strategies — stock.py, prices.py (sharing rows.py) and lookups.py — over one state store (state.py)."""
