"""Log readers. One module per database, each implementing cdc.changes.Source."""
