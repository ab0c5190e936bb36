"""MySQL / MariaDB: the row binlog over a binlog dump connection."""
