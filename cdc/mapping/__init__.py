"""The mapping: its YAML model, rules (sqlglot), the mapping compiled once (compiled.py), the snapshot SQL
built from it, schema checks."""
