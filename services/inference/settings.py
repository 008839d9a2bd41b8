"""Settings of the inference service and the learner (`STREAMML_INFERENCE_*`, `STREAMML_LEARNER_*`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from streams.runtime.lifecycle import GC_THRESHOLDS
from streams.settings import Settings


def _keys(value: str) -> frozenset[str]:
    return frozenset(k.strip() for k in value.split(",") if k.strip())


class ModelSettings(Settings):
    """Which model is served and learned, shared by serving and the learner."""

    model_name: str = Field("purchase", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
                            description="Model name: store keys, prediction log, metrics.")
    model_kind: str = Field("logreg", description="River model: logreg | arf | hoeffding | naive_bayes.")
    model_prior: float = Field(0.05, gt=0, lt=1, description="Score served before any model version exists.")
    model_keep_versions: int = Field(50, ge=2, description="Snapshots whose weights are kept (older: metadata only).")


class InferenceSettings(ModelSettings):
    """The HTTP service (`streamml run inference`)."""

    inference_host: str = "127.0.0.1"
    inference_auth: bool = Field(True, description="false = no API keys (local use only; must be explicit).")
    inference_api_keys: str = Field("", description="Comma-separated keys allowed to predict.")
    inference_admin_keys: str = Field("", description="Comma-separated keys allowed to predict and change models.")
    inference_redis_timeout_ms: float = Field(50.0, gt=0, description="Per-request Redis budget before defaults.")
    inference_redis_retry_s: float = Field(1.0, gt=0, description="After a Redis failure, serve defaults this long.")
    inference_cache_ttl_ms: float = Field(0.0, ge=0, description="In-process feature cache TTL (0 = off).")
    inference_cache_size: int = Field(100_000, ge=1)
    inference_reload_s: float = Field(1.0, gt=0, description="How often the active model version is checked.")
    inference_fast_path: bool = Field(True, description="Serve predict from ASGI directly (same contract).")
    inference_proxy_headers: bool = Field(False, description="Trust X-Forwarded-* (behind a proxy you run).")
    inference_gil_switch_ms: float = Field(0.5, gt=0, description="sys.setswitchinterval for the service.")
    inference_gc_thresholds: tuple[int, int, int] = Field(
        GC_THRESHOLDS, description="gc.set_threshold after startup (Python's default: 700, 10, 10).")
    inference_batch_max: int = Field(1000, ge=1, le=10_000)
    inference_log_buffer: int = Field(100_000, ge=1, description="Predictions held for the log before drops.")
    inference_log_delivery_timeout_ms: int = Field(
        0, ge=0, description="Give up delivering a logged prediction after this (0 = keep retrying).")

    @property
    def api_keys(self) -> frozenset[str]:
        return _keys(self.inference_api_keys)

    @property
    def admin_keys(self) -> frozenset[str]:
        return _keys(self.inference_admin_keys)

    @model_validator(mode="after")
    def _auth_needs_keys(self) -> InferenceSettings:
        if self.inference_auth and not (self.api_keys or self.admin_keys):
            raise ValueError("API keys are on but none is set: set STREAMML_INFERENCE_API_KEYS (and "
                             "STREAMML_INFERENCE_ADMIN_KEYS), or STREAMML_INFERENCE_AUTH=false for local use")
        return self


class LearnerSettings(ModelSettings):
    """The learner (`streamml run learner`): labels joined to served features, snapshots to the store."""

    learner_snapshot_labels: int = Field(1000, ge=1, description="Snapshot after this many new labels ...")
    learner_snapshot_s: float = Field(60.0, gt=0, description="... or after this long with at least one.")
    learner_auto_activate: bool = Field(True, description="Activate each snapshot unless a rollback pinned one.")
    learner_join_window_s: float = Field(
        6 * 3600.0, gt=0, description="How long a served prediction waits for its label.")
    learner_label_wait_s: float = Field(
        300.0, gt=0, description="How long a label waits for its prediction before going to labels.dlq.")
    learner_max_pending: int = Field(2_000_000, ge=1, description="Served predictions held at most (oldest evicted).")
    learner_metrics_port: int = Field(9102, ge=0)

