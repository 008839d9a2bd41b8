"""Prometheus metrics of the CDC reader (names: streamml_cdc_<what>_<unit>)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CHANGES = Counter("streamml_cdc_changes_total", "Change events produced, by table and op (c/u/d/r).",
                  ["table", "op"])
TRANSACTIONS = Counter("streamml_cdc_transactions_total", "Source transactions read from the slot.")
SKIPPED = Counter("streamml_cdc_skipped_total",
                  "Changes or values not carried over, by reason (truncate, unchanged_toast, unrepresentable).",
                  ["table", "reason"])
SCHEMAS = Counter("streamml_cdc_schema_registrations_total", "Table schemas registered (first use or a change).",
                  ["table"])
CONFIRMED_LSN = Gauge("streamml_cdc_confirmed_lsn", "WAL position confirmed to PostgreSQL (acknowledged by Kafka).")
IN_FLIGHT = Gauge("streamml_cdc_in_flight_transactions", "Transactions read but not yet acknowledged by Kafka.")
CONFIRM_LAG = Gauge("streamml_cdc_confirm_lag_seconds",
                    "Age of the oldest transaction not yet acknowledged by Kafka (0 when none).")
SLOT_LAG = Gauge("streamml_cdc_slot_lag_bytes", "WAL the replication slot holds back on the server.")
COMMIT_TO_ACK = Histogram("streamml_cdc_commit_to_ack_seconds",
                          "From the source commit to Kafka's acknowledgement of the transaction's last record.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
