"""The four ops views (Pipeline, Serving, Drift, Model), declared once.

The built-in dashboard evaluates these queries over the ops history; `streamml ops grafana` turns
the same list into the Grafana dashboards in deploy/grafana, so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.ops.queries import Quantile, Query, Rate, Ratio, Value

LAG_MESSAGES = "streamml_kafka_consumer_lag_messages"
LAG_SECONDS = "streamml_kafka_consumer_lag_seconds"
TARGET_UP = "streamml_ops_target_up"


@dataclass(frozen=True)
class Panel:
    """One chart: an id unique across views, a title, the y unit, and its queries (one line each or more)."""

    id: str
    title: str
    unit: str
    queries: tuple[Query, ...]


@dataclass(frozen=True)
class View:
    name: str
    title: str
    panels: tuple[Panel, ...]


FRESHNESS = (Quantile("streamml_features_freshness_seconds", q=0.5, window_s=60, legend="p50", scale=1000),
             Quantile("streamml_features_freshness_seconds", q=0.99, window_s=60, legend="p99", scale=1000))
SERVING_LATENCY = (
    Quantile("streamml_inference_request_latency_seconds", by=("endpoint",), q=0.5, window_s=60,
             legend="p50 {endpoint}", scale=1000),
    Quantile("streamml_inference_request_latency_seconds", by=("endpoint",), q=0.99, window_s=60,
             legend="p99 {endpoint}", scale=1000))
PSI = Value("streamml_drift_psi_ratio", by=("model", "feature"), agg="max", legend="{model} {feature}")
DRIFT_ALERTS = Value("streamml_drift_alert", by=("model", "feature"), agg="max", legend="{model} {feature}")

VIEWS: tuple[View, ...] = (
    View("pipeline", "Pipeline", (
        Panel("pipeline.events", "Events in", "events/s",
              (Rate("streamml_features_events_total", by=("topic",)),)),
        Panel("pipeline.lag_messages", "Consumer lag", "messages",
              (Value(LAG_MESSAGES, by=("group",), agg="sum"),)),
        Panel("pipeline.lag_seconds", "Consumer lag (age of oldest unprocessed record)", "s",
              (Value(LAG_SECONDS, by=("group",), agg="max"),)),
        Panel("pipeline.freshness", "Feature freshness (Kafka timestamp to Redis write)", "ms", FRESHNESS),
        Panel("pipeline.dead_letters", "Dead letters", "records/s", (
            Rate("streamml_features_dead_letters_total", by=("topic", "reason"), legend="{topic} {reason}"),
            Rate("streamml_drift_records_total", by=("outcome",), where=(("outcome", "=~", "late|invalid"),),
                 legend="predictions {outcome}"),
            Rate("streamml_model_labels_total", by=("outcome",), where=(("outcome", "=", "unmatched"),),
                 legend="labels {outcome}"))),
        Panel("pipeline.late", "Late events (to the DLQ)", "events/s",
              (Rate("streamml_features_late_events_total", by=("topic",)),)),
        Panel("pipeline.cdc_changes", "CDC changes from PostgreSQL", "changes/s",
              (Rate("streamml_cdc_changes_total", by=("table", "op"), legend="{table} {op}"),)),
        Panel("pipeline.cdc_lag", "CDC: oldest change not yet in Kafka", "s",
              (Value("streamml_cdc_confirm_lag_seconds", agg="max", legend="confirm lag"),)),
    )),
    View("serving", "Serving", (
        Panel("serving.requests", "Requests by status", "req/s",
              (Rate("streamml_inference_requests_total", by=("status",)),)),
        Panel("serving.latency", "Latency (server side)", "ms", SERVING_LATENCY),
        Panel("serving.degraded", "Degraded share", "%", (
            Ratio("degraded", legend="degraded", scale=100,
                  numerator=Rate("streamml_inference_degraded_total", absent_as_zero=True),
                  denominator=Rate("streamml_inference_predictions_total")),)),
        Panel("serving.prediction_log", "Prediction log", "records/s",
              (Rate("streamml_inference_prediction_log_records_total", by=("outcome",)),)),
    )),
    View("drift", "Drift", (
        Panel("drift.psi", "PSI per feature (latest closed window)", "PSI", (PSI,)),
        Panel("drift.alerts", "Sustained critical PSI (alert = 1)", "alert", (DRIFT_ALERTS,)),
        Panel("drift.records", "Predictions by outcome", "records/s",
              (Rate("streamml_drift_records_total", by=("outcome",)),)),
    )),
    View("model", "Model", (
        Panel("model.roc_auc", "ROC AUC (progressive)", "AUC",
              (Value("streamml_model_roc_auc_ratio", by=("model",), agg="max"),)),
        Panel("model.log_loss", "Log loss (progressive)", "log loss",
              (Value("streamml_model_log_loss", by=("model",), agg="max"),)),
        Panel("model.active_version", "Active version", "version",
              (Value("streamml_model_active_version_number", by=("model",), agg="max"),)),
        Panel("model.labels", "Labels by outcome", "labels/s",
              (Rate("streamml_model_labels_total", by=("outcome",)),)),
    )),
)


def sample_names() -> set[str]:
    """Every sample name some view reads: the only ones the ops history keeps."""
    return {name for view in VIEWS for panel in view.panels for q in panel.queries for name in q.names()} | {
        LAG_MESSAGES, LAG_SECONDS, TARGET_UP}


def longest_window_s() -> int:
    """How far before a range a query needs rounds (a rate at the first point needs its window)."""
    return max([getattr(q, "window_s", 0) for v in VIEWS for p in v.panels for q in p.queries] or [0])
