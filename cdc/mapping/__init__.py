"""The mapping: its YAML model, rules (sqlglot), the snapshot SQL built from them, schema checks."""
