"""The embedded default stack: which processes `streamml up` starts, in order, and how it checks them.

Broker (Tansu, memory storage), Redis, the schema registry, then provisioning (topics with explicit
partition counts, contract schemas), then the pipeline processes, then (with --demo) the load generator.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from schemas.registry import RegistryClient
from schemas.topics import all_topic_names
from services.inference.settings import LearnerSettings
from services.stack.binaries import redis_argv, tansu_argv
from services.stack.health import http_ok, kafka_ok, port_open, redis_ok, wait_until
from services.stack.supervisor import ProcessRecord, ProcessSpec, StackError, Supervisor
from streams.kafka.admin import ensure_topics
from streams.settings import CdcSettings, DriftSettings, FeatureFlowSettings, Settings, load_settings

STARTUP_TIMEOUT_S = 60.0
LOADGEN_METRICS_PORT = 9105  # the demo load generator's /metrics unless STREAMML_LOADGEN_METRICS_PORT says otherwise


@dataclass(frozen=True)
class StackProcess:
    """A process of the embedded stack with its readiness check."""

    spec: ProcessSpec
    ready: Callable[[], bool]
    endpoint: str


def _is_local(host: str | None) -> bool:
    return host in ("127.0.0.1", "localhost", "::1", None)


def _streamml(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


def infrastructure(settings: Settings) -> list[StackProcess]:
    """Broker, Redis and registry — only those whose configured address is on this machine."""
    out: list[StackProcess] = []
    kafka_host = settings.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[0]
    if _is_local(kafka_host):
        port = settings.kafka_port
        out.append(StackProcess(
            ProcessSpec("broker", tansu_argv(port), port=port),
            lambda: kafka_ok(settings.kafka_config()), f"kafka://127.0.0.1:{port}"))
    redis = urlparse(settings.redis_url)
    if _is_local(redis.hostname):
        data = settings.home / "redis"
        out.append(StackProcess(
            ProcessSpec("redis", redis_argv(settings.redis_port, data, redis.password), port=settings.redis_port),
            lambda: redis_ok(settings.redis_url), f"redis://127.0.0.1:{settings.redis_port}"))
    registry = urlparse(settings.schema_registry_url)
    if _is_local(registry.hostname):
        port = registry.port or settings.registry_port
        health = f"http://127.0.0.1:{port}/healthz"
        out.append(StackProcess(
            ProcessSpec("registry", _streamml("run", "registry"), port=port, health_url=health,
                        env={"STREAMML_REGISTRY_PORT": str(port), "STREAMML_HOME": str(settings.home)}),
            lambda: http_ok(health), f"http://127.0.0.1:{port}"))
    return out


def pipeline(settings: Settings, demo: bool, demo_rate: float, cdc: dict[str, str] | None = None) -> list[StackProcess]:
    """The streamml processes that run on top of the infrastructure (`cdc`: STREAMML_CDC_* for the CDC reader)."""
    out: list[StackProcess] = []
    home = {"STREAMML_HOME": str(settings.home)}
    if cdc:
        cdc_metrics = load_settings(CdcSettings).cdc_metrics_port
        out.append(StackProcess(
            ProcessSpec("cdc", _streamml("run", "cdc"), env={**home, **cdc}, metrics_port=cdc_metrics,
                        health_url=f"http://127.0.0.1:{cdc_metrics}/metrics"),
            lambda: http_ok(f"http://127.0.0.1:{cdc_metrics}/metrics"), f"http://127.0.0.1:{cdc_metrics}/metrics"))
    flow_metrics = load_settings(FeatureFlowSettings).features_metrics_port
    out.append(StackProcess(
        ProcessSpec("features", _streamml("run", "features"), env=home, metrics_port=flow_metrics,
                    health_url=f"http://127.0.0.1:{flow_metrics}/metrics"),
        lambda: http_ok(f"http://127.0.0.1:{flow_metrics}/metrics"), f"http://127.0.0.1:{flow_metrics}/metrics"))
    serving = _inference_env(settings)
    port = settings.inference_port
    out.append(StackProcess(
        ProcessSpec("inference", _streamml("run", "inference"), port=port, env={**home, **serving},
                    health_url=f"http://127.0.0.1:{port}/readyz", metrics_port=port),
        lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), f"http://127.0.0.1:{port}/docs"))
    learner_metrics = load_settings(LearnerSettings).learner_metrics_port
    out.append(StackProcess(
        ProcessSpec("learner", _streamml("run", "learner"), env={**home, **_demo_env(demo)},
                    metrics_port=learner_metrics, health_url=f"http://127.0.0.1:{learner_metrics}/metrics"),
        lambda: http_ok(f"http://127.0.0.1:{learner_metrics}/metrics"),
        f"http://127.0.0.1:{learner_metrics}/metrics"))
    drift_metrics = load_settings(DriftSettings).drift_metrics_port
    out.append(StackProcess(
        ProcessSpec("drift", _streamml("run", "drift"), env={**home, **_demo_env(demo)},
                    metrics_port=drift_metrics,
                    health_url=f"http://127.0.0.1:{drift_metrics}/metrics"),
        lambda: http_ok(f"http://127.0.0.1:{drift_metrics}/metrics"), f"http://127.0.0.1:{drift_metrics}/metrics"))
    ops = settings.ops_port
    out.append(StackProcess(
        ProcessSpec("ops", _streamml("run", "ops"), port=ops, env=home, metrics_port=ops,
                    health_url=f"http://127.0.0.1:{ops}/healthz"),
        lambda: http_ok(f"http://127.0.0.1:{ops}/healthz"), f"http://127.0.0.1:{ops}/dashboard"))
    if demo:
        loadgen_metrics = settings.loadgen_metrics_port or LOADGEN_METRICS_PORT
        out.append(StackProcess(
            ProcessSpec("loadgen", _streamml("produce", "--rate", str(demo_rate), "--duration", "0",
                                             "--predict-url", f"http://127.0.0.1:{port}",
                                             "--metrics-port", str(loadgen_metrics)),
                        env={**home, **_demo_env(demo)}, metrics_port=loadgen_metrics),
            lambda: True, f"{demo_rate:g} events/s"))
    return out


def _demo_env(demo: bool) -> dict[str, str]:
    """The demo shows PSI within minutes: 20 s windows, each model version's first 2 as its reference, and
    a new version every 2 minutes rather than every minute; its traffic goes out in 100 ms batches, with
    which Tansu's cost grows ~25x slower than with 5 ms ones (anything set explicitly wins)."""
    if not demo:
        return {}
    wanted = {"STREAMML_DRIFT_WINDOW_S": "20", "STREAMML_DRIFT_LATENESS_S": "5",
              "STREAMML_DRIFT_REFERENCE_WINDOWS": "2", "STREAMML_LEARNER_SNAPSHOT_S": "120",
              "STREAMML_LOADGEN_LINGER_MS": "100"}
    return {k: os.environ.get(k, v) for k, v in wanted.items()}


def _inference_env(settings: Settings) -> dict[str, str]:
    """The embedded stack is for local use: without configured API keys it turns auth off, explicitly."""

    if os.environ.get("STREAMML_INFERENCE_API_KEYS") or os.environ.get("STREAMML_INFERENCE_ADMIN_KEYS"):
        return {}
    return {"STREAMML_INFERENCE_AUTH": os.environ.get("STREAMML_INFERENCE_AUTH", "false")}


def provision(settings: Settings) -> dict[str, int]:
    """Create every contract topic (and its DLQ) and register every contract schema. Idempotent."""
    topics = ensure_topics(settings.kafka_config(), all_topic_names(), settings.topic_partitions,
                           settings.topic_replication)
    RegistryClient(settings.schema_registry_url).register_contract()
    return topics


@dataclass
class UpResult:
    started: list[str]
    already_running: list[str]
    topics: dict[str, int]
    endpoints: dict[str, str]


def up(settings: Settings, demo: bool = False, demo_rate: float = 200.0,
       cdc: dict[str, str] | None = None) -> UpResult:
    """Start what is not running, wait for each to be ready, provision; safe to run twice."""
    supervisor = Supervisor(settings.run_dir, settings.log_dir)
    (settings.home / "redis").mkdir(parents=True, exist_ok=True)
    started, already = [], []
    endpoints: dict[str, str] = {}
    infra = infrastructure(settings)
    for proc in infra:
        _start_one(supervisor, proc, started, already)
        endpoints[proc.spec.name] = proc.endpoint
    topics = provision(settings)
    for proc in pipeline(settings, demo, demo_rate, cdc):
        _start_one(supervisor, proc, started, already)
        endpoints[proc.spec.name] = proc.endpoint
    return UpResult(started, already, topics, endpoints)


def _start_one(supervisor: Supervisor, proc: StackProcess, started: list[str], already: list[str]) -> None:
    spec = proc.spec
    if supervisor.running(spec.name):
        already.append(spec.name)
        return
    if spec.port is not None and port_open(spec.port):
        raise StackError(
            f"port {spec.port} for {spec.name} is taken by a process streamml did not start; stop it, "
            f"or point streamml elsewhere with STREAMML_* settings (see `streamml status`)"
        )
    record = supervisor.start(spec)
    if not wait_until(lambda: proc.ready() or not supervisor.is_alive(record), STARTUP_TIMEOUT_S) \
            or not supervisor.is_alive(record):
        tail = _tail(Path(record.log))
        supervisor.stop(spec.name)
        raise StackError(f"{spec.name} did not become ready in {STARTUP_TIMEOUT_S:.0f}s; last log lines:\n{tail}")
    started.append(spec.name)


def down(settings: Settings) -> list[str]:
    """Stop every process `up` started, newest first; returns the names that were running."""
    supervisor = Supervisor(settings.run_dir, settings.log_dir)
    stopped = []
    for record in reversed(supervisor.records()):
        if supervisor.stop(record.name):
            stopped.append(record.name)
    return stopped


def status(settings: Settings) -> list[dict]:
    """One row per process `up` started: pid, port, alive, ready."""
    supervisor = Supervisor(settings.run_dir, settings.log_dir)
    rows = []
    for record in supervisor.records():
        alive = supervisor.is_alive(record)
        rows.append({
            "name": record.name, "pid": record.pid, "port": record.port, "alive": alive,
            "ready": alive and _ready(record), "metrics_port": record.metrics_port, "log": record.log,
        })
    return rows


def _ready(record: ProcessRecord) -> bool:
    if record.health_url:
        return http_ok(record.health_url)
    if record.port:
        return port_open(record.port)
    return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
