"""Settings of every streamml process, read once from `STREAMML_*` environment variables.

Defaults describe the embedded stack on 127.0.0.1. Kafka client settings pass through:
`STREAMML_KAFKA_SASL_MECHANISM=PLAIN` becomes librdkafka's `sasl.mechanism` for every client.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError
from streams.runtime.lifecycle import EPOCH_GC_THRESHOLDS

ENV_PREFIX = "STREAMML_"
_KAFKA_PREFIX = f"{ENV_PREFIX}KAFKA_"
_SECRET_WORDS = ("password", "secret", "key", "token", "jaas")


class Settings(BaseSettings):
    """Shared settings: where the broker, Redis, registry and state live, and how to log."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    home: Path = Field(Path(".streamml"), description="State dir: data, logs, pid files, recovery.")
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    schema_registry_url: str = "http://127.0.0.1:8081"
    topic_partitions: int = Field(4, ge=1, le=1024)
    topic_replication: int = Field(1, ge=1)
    registry_port: int = 8081
    inference_port: int = 8000
    ops_port: int = 8001
    metrics_host: str = Field("127.0.0.1", description="Interface the /metrics servers bind (0.0.0.0 in containers).")
    loadgen_metrics_port: int | None = Field(
        None, ge=0, description="/metrics port of `streamml produce` (unset: none; 0: any free port); `up --demo` "
                                "runs it on 9105.")
    loadgen_linger_ms: int = Field(
        5, ge=0, description="linger.ms of `streamml produce`. `up --demo` uses 100: Tansu's fetches cost more with "
                             "every record batch it holds (README, known broker quirks).")
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    kafka_client: dict[str, str] = Field(
        default_factory=dict, description="librdkafka passthrough from STREAMML_KAFKA_* (filled at load)."
    )

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("STREAMML_KAFKA_BOOTSTRAP_SERVERS is empty; set host:port[,host:port]")
        return value

    # --- derived -----------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def kafka_port(self) -> int:
        return _port_of(self.kafka_bootstrap_servers.split(",")[0], 9092)

    @property
    def redis_port(self) -> int:
        return urlparse(self.redis_url).port or 6379

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka config for any client: bootstrap servers, passthrough security settings, overrides."""
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **self.kafka_client, **overrides}

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict safe to log: secrets and credentials in URLs masked."""
        data = self.model_dump(mode="json")
        for name, value in data.items():
            if value and isinstance(value, str) and _is_secret(name):
                data[name] = "***"
        data["kafka_client"] = {k: ("***" if _is_secret(k) else v) for k, v in self.kafka_client.items()}
        data["redis_url"] = _mask_url(self.redis_url)
        data["schema_registry_url"] = _mask_url(self.schema_registry_url)
        return data


def _is_secret(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS) and not name.endswith(".location")


def _mask_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def _port_of(hostport: str, default: int) -> int:
    try:
        return int(hostport.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return default


def kafka_passthrough(environ: dict[str, str]) -> dict[str, str]:
    """`STREAMML_KAFKA_SECURITY_PROTOCOL=SASL_SSL` -> {"security.protocol": "SASL_SSL"}."""
    out = {}
    for name, value in environ.items():
        if name.startswith(_KAFKA_PREFIX) and name != f"{_KAFKA_PREFIX}BOOTSTRAP_SERVERS":
            out[name[len(_KAFKA_PREFIX):].lower().replace("_", ".")] = value
    return out


def load_settings(cls: type[Settings] = Settings, **overrides: Any) -> Settings:
    """Read settings of kind `cls` from the environment; `ConfigError` names the bad variable."""
    try:
        return cls(kafka_client=kafka_passthrough(dict(os.environ)), **overrides)
    except Exception as exc:
        raise ConfigError(f"invalid STREAMML_* settings: {exc}") from exc


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide shared settings, read once."""
    return load_settings()


class FeatureFlowSettings(Settings):
    """The Bytewax feature flow (`streamml run features`)."""

    features_shards: int = Field(16, ge=1, description="State shards per entity (Bytewax keys).")
    features_lateness_s: float = Field(300.0, ge=0, description="Allowed lateness; later events go to the DLQ.")
    features_epoch_s: float = Field(10.0, gt=0, description="Snapshot (epoch) interval; also the Parquet flush cadence.")
    features_batch_size: int = Field(
        20000, ge=1, description="Max records per poll (one consumer per worker reads all its partitions) and per "
                                 "partition batch. Only a backlog fills a poll; larger ones coalesce more writes per "
                                 "key: catching up ran 39k ev/s at 5000, 44k at 10000, 48k at 20000 and 40000.")
    features_fetch_wait_ms: int = Field(
        10, ge=0, description="fetch.wait.max.ms of the flow's consumer. Tansu holds an empty fetch this long even "
                              "when data arrives, so it bounds added latency there; Apache Kafka answers as soon as "
                              "data comes, so 500 costs it nothing.")
    features_recovery: bool = Field(True, description="Keep Bytewax recovery snapshots under $HOME/recovery.")
    features_recovery_partitions: int = Field(4, ge=1)
    features_workers: int = Field(1, ge=1, description="Worker threads per process (GIL-bound: prefer processes).")
    features_process_id: int | None = Field(None, description="This process's index in a multi-process cluster.")
    features_addresses: str | None = Field(None, description="host:port;host:port of every cluster process.")
    features_metrics_port: int = Field(9101, ge=0, description="Prometheus /metrics port (0 = any free port).")
    features_namespace: str = Field(
        "", description="Redis namespace to write into: '' follows the active one (and rebuilds in progress), "
                        "'default' or a name pins it.")
    features_log_period_s: float = Field(
        300.0, gt=0, description="Tumbling window of the offline feature log (one file per window and shard).")
    features_log_idle_s: float = Field(30.0, gt=0, description="Close a quiet shard's open log windows after this; a "
                                       "source partition quiet this long stops holding log windows back.")
    features_gc_thresholds: tuple[int, int, int] = Field(
        EPOCH_GC_THRESHOLDS, description="gc.set_threshold after startup (Python's default: 700, 10, 10).")
    features_arena_cache_mb: int = Field(
        256, ge=0, description="Emptied 1 MiB arenas of Python's object allocator the flow keeps for reuse instead of "
        "handing them back to the system (0: none); with none, the kernel zeroing fresh pages took ~20% of its CPU.")

    @property
    def recovery_dir(self) -> Path:
        return self.home / "recovery" / "features"


class DriftSettings(Settings):
    """The drift job (`streamml run drift`): PSI windows over the prediction log."""

    drift_window_s: float = Field(3600.0, gt=0, description="Tumbling event-time window (seconds for demos/tests).")
    drift_lateness_s: float = Field(300.0, ge=0, description="A window closes this long after its end.")
    drift_idle_close_s: float = Field(10.0, gt=0, description="No predictions for this long: advance the "
                                                              "watermark with the wall clock.")
    drift_alert_windows: int = Field(3, ge=1, description="Critical this many windows in a row = alert.")
    drift_batch: int = Field(10_000, ge=1, description="Records per batch (faust take_events).")
    drift_batch_within_s: float = Field(0.5, gt=0)
    drift_metrics_port: int = Field(9103, ge=0)
    drift_reference_windows: int = Field(
        0, ge=0, description="K > 0: a model version with no frozen reference uses its own first K windows.")
    drift_reference_sample: int = Field(20_000, ge=100, description="Rows sampled for an automatic reference.")


class CdcSettings(Settings):
    """The PostgreSQL CDC reader (`streamml cdc`): logical replication -> Debezium-style Avro on `cdc.<db>.<table>`."""

    cdc_dsn: SecretStr = Field(SecretStr(""), description="Source database, e.g. postgresql://user:pw@host:5432/shop "
                                                           "(the user needs REPLICATION and SELECT).")
    cdc_tables: str = Field("", description="Comma-separated schema.table list to capture, e.g. "
                                            "public.users,public.items.")
    cdc_slot: str = Field("streamml_cdc", pattern=r"^[a-z0-9_]{1,63}$", description="Logical replication slot.")
    cdc_publication: str = Field("streamml_cdc", description="Publication of the tables (created when missing).")
    cdc_db_name: str = Field("", description="Database name in topic names and source.db; '' = the DSN's database.")
    cdc_snapshot: Literal["initial", "never"] = Field(
        "initial", description="initial: emit every existing row (op r) before streaming; never: changes only.")
    cdc_feedback_s: float = Field(1.0, gt=0, description="How often the acknowledged position is confirmed to "
                                                         "PostgreSQL (the slot frees WAL up to it).")
    cdc_snapshot_fetch: int = Field(5000, ge=1, description="Rows per fetch of the initial snapshot.")
    cdc_connect_timeout_s: float = Field(30.0, gt=0, description="Give up (exit 2) when the database was never "
                                                                 "reached within this long of the start.")
    cdc_metrics_port: int = Field(9104, ge=0)

    @property
    def state_dir(self) -> Path:
        return self.home / "cdc"

    @property
    def table_names(self) -> list[str]:
        return [t.strip() for t in self.cdc_tables.split(",") if t.strip()]
