"""Shop sinks: push fact values to shop admin APIs. Sinks import erpsync.facts only, never cdc."""
