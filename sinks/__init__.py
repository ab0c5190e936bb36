"""Shop sinks: push fact values to shop admin APIs. Sinks import cdc.facts, never the sources, the outbox
or erpsync."""
