"""Debezium envelopes from NATS JetStream or Kafka (the bridge for ERPs erpsync cannot read itself)."""
