"""PostgreSQL: logical replication (pgoutput) over a slot and a publication."""
