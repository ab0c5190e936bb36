"""Change data capture: log readers (sources), the normalizing layer and the outbox."""
