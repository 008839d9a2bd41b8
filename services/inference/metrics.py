"""Prometheus metrics of the inference service and the learner (names: streamml_inference_*, streamml_model_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Counter("streamml_inference_requests_total", "HTTP predict requests by endpoint and status.",
                   ["endpoint", "status"])
PREDICTIONS = Counter("streamml_inference_predictions_total", "Predictions served.", ["model"])
LATENCY = Histogram("streamml_inference_request_latency_seconds", "Server-side latency of predict requests.",
                    ["endpoint"], buckets=_LATENCY_BUCKETS)
FEATURE_FETCH = Histogram("streamml_inference_feature_fetch_seconds", "One pipelined Redis read of all hashes.",
                          buckets=_LATENCY_BUCKETS)
FEATURE_AGE = Histogram("streamml_inference_feature_age_seconds",
                        "Age of the oldest entity's features at serving (now - its `_ts`).",
                        buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 86400))
DEGRADED = Counter("streamml_inference_degraded_total", "Predictions served degraded, by reason.", ["reason"])
ENTITY_MISSING = Counter("streamml_inference_entity_missing_total",
                         "Entities with no online features (declared defaults served).", ["entity"])
CACHE = Counter("streamml_inference_feature_cache_total", "In-process feature cache lookups.", ["result"])
LOG_RECORDS = Counter("streamml_inference_prediction_log_records_total",
                      "Prediction log records by outcome: queued, delivered, failed, dropped (buffer full).",
                      ["outcome"])
LOG_BUFFERED = Gauge("streamml_inference_prediction_log_buffered_records",
                     "Prediction log records waiting in the process (not yet handed to librdkafka).")
MODEL_VERSION = Gauge("streamml_inference_model_info", "1 for the model version this process serves.",
                      ["model", "version"])
MODEL_RELOADS = Counter("streamml_inference_model_reloads_total", "Active-version changes loaded.", ["model"])

LABELS = Counter("streamml_model_labels_total",
                 "Labels by outcome: learned, duplicate, unmatched (to labels.dlq), invalid.", ["model", "outcome"])
PENDING = Gauge("streamml_model_join_pending_records", "Join state held by the learner.", ["model", "side"])
ROC_AUC = Gauge("streamml_model_roc_auc_ratio", "Progressive (test-then-train) ROC AUC.", ["model"])
LOG_LOSS = Gauge("streamml_model_log_loss", "Progressive (test-then-train) log loss.", ["model"])
SNAPSHOTS = Counter("streamml_model_snapshots_total", "Model snapshots saved.", ["model"])
ACTIVE_VERSION = Gauge("streamml_model_active_version_number", "Numeric part of the active version.", ["model"])
