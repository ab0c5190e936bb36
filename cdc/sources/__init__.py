"""Log readers: one folder per ERP database (reader, decoder, position, config.py, admin.py), each behind
the SourcePlugin protocol of registry.py and implementing cdc.changes.Source."""
