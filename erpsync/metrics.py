"""Prometheus metrics, with the names ops see (DESIGN.md). One registry per process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

source_lag_bytes = Gauge("erpsync_source_lag_bytes", "Bytes of ERP log not yet confirmed (WAL/binlog)",
                         registry=REGISTRY)
source_lag_seconds = Gauge("erpsync_source_lag_seconds", "Seconds behind the ERP's last commit",
                           registry=REGISTRY)
source_retained_bytes = Gauge("erpsync_source_retained_bytes", "WAL the replication slot keeps on the ERP",
                              registry=REGISTRY)
source_connected = Gauge("erpsync_source_connected", "1 while the log reader is streaming", registry=REGISTRY)
changes_total = Counter("erpsync_changes_total", "Row changes read from the ERP", ["table", "op"],
                        registry=REGISTRY)
transactions_total = Counter("erpsync_transactions_total", "ERP transactions read", registry=REGISTRY)
facts_written_total = Counter("erpsync_facts_written_total", "Fact values changed in the outbox", ["kind"],
                              registry=REGISTRY)
outbox_pending = Gauge("erpsync_outbox_pending", "Facts a sink has not acknowledged yet", ["sink"],
                       registry=REGISTRY)
end_to_end_seconds = Histogram(
    "erpsync_end_to_end_seconds", "ERP commit to shop acknowledgement", ["sink"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
sink_request_seconds = Histogram("erpsync_sink_request_seconds", "Duration of one push to a shop", ["sink"],
                                 registry=REGISTRY)
sink_facts_total = Counter("erpsync_sink_facts_total", "Facts pushed, by outcome", ["sink", "outcome"],
                           registry=REGISTRY)
sink_throttled_total = Counter("erpsync_sink_throttled_total", "Throttled answers from the shop", ["sink"],
                               registry=REGISTRY)
sink_errors_total = Counter("erpsync_sink_errors_total", "Failed pushes by kind (retry|permanent)",
                            ["sink", "kind"], registry=REGISTRY)
sink_bad_answers_total = Counter(
    "erpsync_sink_bad_answers_total",
    "Pushes that met a broken or hostile shop answer, by kind (too_large|deadline|redirect|bad_answer) or "
    "failed inside the sink (crash); the facts stay in the outbox", ["sink", "kind"], registry=REGISTRY)
dlq_size = Gauge("erpsync_dlq_size", "Facts in the dead-letter table", ["sink"], registry=REGISTRY)
stock_clamped_total = Counter("erpsync_stock_clamped_total", "Negative stock sums clamped to 0",
                              registry=REGISTRY)
data_errors_total = Counter("erpsync_data_errors_total", "ERP rows a rule could not evaluate",
                            registry=REGISTRY)
# Refreshed from the outbox's sink_status table by the ops server before each scrape (0 = never).
sink_last_success_timestamp = Gauge("erpsync_sink_last_success_timestamp",
                                    "Unix time of the last fact a shop acknowledged", ["sink"],
                                    registry=REGISTRY)
sink_last_error_timestamp = Gauge("erpsync_sink_last_error_timestamp", "Unix time of the last failed push",
                                  ["sink"], registry=REGISTRY)
drift_items = Gauge("erpsync_drift_items", "Drift found by the last reconcile", ["sink", "kind"],
                    registry=REGISTRY)
# Scale-out (bus: nats): per sink, partition and worker.
bus_published_total = Counter("erpsync_bus_published_total", "Fact messages JetStream stored (reader)",
                              registry=REGISTRY)
bus_consumer_lag_messages = Gauge("erpsync_bus_consumer_lag_messages",
                                  "Messages of a partition not yet acknowledged by its workers",
                                  ["sink", "partition", "worker"], registry=REGISTRY)
bus_consumer_lag_seconds = Gauge("erpsync_bus_consumer_lag_seconds",
                                 "Age of the oldest message in the batch a worker is processing",
                                 ["sink", "partition", "worker"], registry=REGISTRY)
bus_redeliveries_total = Counter("erpsync_bus_redeliveries_total",
                                 "Messages delivered again (a worker died, nak'd or timed out)",
                                 ["sink", "partition", "worker"], registry=REGISTRY)
bus_delivered_total = Counter("erpsync_bus_delivered_total", "Facts a worker got the shop to accept",
                              ["sink", "partition", "worker"], registry=REGISTRY)
bus_stale_total = Counter("erpsync_bus_stale_total",
                          "Messages skipped: coalesced in a batch or older than the version delivered",
                          ["sink", "partition", "worker"], registry=REGISTRY)
