"""Prometheus metrics of the feature flow (names: streamml_features_<what>_<unit>)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("streamml_features_events_total", "Records read by the feature flow.", ["topic"])
DEAD_LETTERS = Counter("streamml_features_dead_letters_total", "Records sent to a DLQ, by reason.",
                       ["topic", "reason"])
LATE_EVENTS = Counter("streamml_features_late_events_total",
                      "Events later than the allowed lateness (sent to the DLQ).", ["topic"])
REDIS_WRITE_SECONDS = Histogram("streamml_features_redis_write_seconds", "Latency of one pipelined Redis write.",
                                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
REDIS_KEYS_WRITTEN = Counter("streamml_features_redis_keys_total", "Entity hashes written.", ["entity"])
REDIS_STALE_WRITES = Counter("streamml_features_redis_stale_writes_total",
                             "Writes refused because Redis already reflects a later event time.", ["entity"])
REDIS_ERRORS = Counter("streamml_features_redis_errors_total", "Failed Redis writes (retried).")
FRESHNESS_SECONDS = Histogram(
    "streamml_features_freshness_seconds", "From the record's Kafka timestamp to its Redis write.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
POSITION = Gauge("streamml_features_position_offset", "Next offset the flow will read.", ["topic", "partition"])
HIGH_WATERMARK = Gauge("streamml_features_high_watermark_offset", "Partition high watermark.",
                       ["topic", "partition"])
EVENT_TIME_WATERMARK = Gauge("streamml_features_event_time_watermark_seconds",
                             "Max event time seen per partition (epoch s).", ["topic", "partition"])
PARQUET_ROWS = Counter("streamml_features_parquet_rows_total", "Rows written to the Parquet logs.", ["log"])
LOG_WINDOW_MERGES = Counter("streamml_features_log_window_merges_total",
                            "Feature-log windows written again into an existing file (re-sent after a restart, or reopened by an "
                            "event that arrived after the window had closed).", ["entity"])
SNAPSHOT_SECONDS = Histogram(
    "streamml_features_snapshot_seconds", "Time one state shard took to snapshot at an epoch's end (the flow stands still "
    "meanwhile; an epoch's pause is the sum over its shards).", ["entity"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
SNAPSHOT_BYTES = Counter(
    "streamml_features_snapshot_bytes_total", "Bytes each epoch's state snapshots wrote: segment files (a delta, or "
    "a new base now and then) plus the manifest handed to Bytewax's recovery store.",
    ["entity"])
