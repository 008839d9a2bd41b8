"""Drive the load generator into Kafka at a steady rate: topics first, then rate-limited publishing.

A token bucket refilled per small batch caps the total events/s across topics; SIGTERM (via
`Shutdown`) stops the loop between batches, and everything queued is flushed before returning.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from itertools import islice
from typing import Any

from prometheus_client import start_http_server

from schemas.errors import ConfigError
from schemas.serde import SchemaSource
from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM, LABELS, TopicSpec
from services.loadgen.config import LoadConfig
from services.loadgen.generator import LoadGenerator
from services.loadgen.metrics import LoadCollector
from services.loadgen.served import ServedPredictions
from services.producer import EventProducer
from streams.kafka.admin import ensure_topics
from streams.runtime.lifecycle import Shutdown
from streams.runtime.logging import get_logger
from streams.settings import Settings

log = get_logger(__name__)

LOAD_TOPICS: tuple[TopicSpec, ...] = (CDC_USERS, CDC_ITEMS, CLICKSTREAM, LABELS)
_MAX_BATCH = 500  # events per bucket refill: ~100 refills/s at high rates, 1 event/refill at low ones
_UNLIMITED_BATCH = 2000
_EMPTY = {"queued": 0, "delivered": 0, "failed": 0, "bytes": 0}


def run_load(
    settings: Settings,
    config: LoadConfig,
    rate: float,
    duration_s: float | None,
    registry: SchemaSource,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    shutdown: Shutdown | None = None,
    max_events: int | None = None,
    producer: EventProducer | None = None,
    progress_every_s: float = 5.0,
    served: ServedPredictions | None = None,
    metrics_port: int | None = None,
) -> dict[str, Any]:
    """Publish generated events at `rate` total events/s (<= 0: as fast as possible); returns a summary.

    Runs until `duration_s` passes (None or 0: until `shutdown`), `max_events` are sent, or shutdown
    is requested. Event time starts at the wall clock (unless `config.start_ms` is set) and, with
    `config.event_rate` following `rate`, keeps pace with it. A caller-supplied `producer` is flushed,
    not closed, and the per-topic counts in the summary are its totals. With `served`, the shop's
    predictions are asked of the inference service and labels carry the served prediction ids. With
    `metrics_port` (0 = any free one, returned in the summary), `streamml_loadgen_*` are served on /metrics
    while the run lasts.
    """
    if rate > 0:
        config = dataclasses.replace(config, event_rate=rate)
    if config.start_ms is None:
        config = dataclasses.replace(config, start_ms=int(time.time() * 1000))
    generator = LoadGenerator(config)
    if served is not None:
        generator.issued = []
    _warn_if_sessions_never_end(generator, rate)
    topics = ensure_topics(settings.kafka_config(), [t.name for t in LOAD_TOPICS],
                           settings.topic_partitions, settings.topic_replication)
    own_producer = producer is None
    producer = producer or EventProducer(settings, registry, client_id="streamml-loadgen",
                                         **{"linger.ms": settings.loadgen_linger_ms})
    producer.ensure_schemas(LOAD_TOPICS)  # a registry problem fails here, before the first event
    events = generator if max_events is None else islice(generator, max_events)
    collector, server = None, None
    try:
        if metrics_port is not None:
            try:
                server, _thread = start_http_server(metrics_port, addr=settings.metrics_host)
            except OSError as exc:
                raise ConfigError(f"cannot serve the load generator's /metrics on port {metrics_port} ({exc}); "
                                  "pass --metrics-port (or STREAMML_LOADGEN_METRICS_PORT) a free port, 0 for any") from exc
            metrics_port = server.server_address[1]
            collector = LoadCollector(producer, generator, rate)
            collector.register()
        sent, stopped, started, elapsed = _pump(events, producer, rate, duration_s, shutdown,
                                                on_progress, progress_every_s, generator, served)
    finally:
        undelivered = producer.close() if own_producer else producer.flush()
        if collector is not None:
            collector.unregister()
        if server is not None:
            server.shutdown()
            server.server_close()
    flushed = time.monotonic() - started
    stats = producer.stats()
    summary = {
        "stopped": stopped,
        "target_rate": rate,
        "achieved_rate": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "delivered_rate": round(stats["delivered"] / flushed, 1) if flushed > 0 else 0.0,
        "elapsed_s": round(elapsed, 3),
        "events": sent,
        "undelivered": undelivered,
        "idempotent": stats["idempotent"],
        "topics": {name: {**_EMPTY, **stats["topics"].get(name, {}), "partitions": topics[name]} for name in topics},
        "late": generator.stats.late,
        "seed": config.seed,
        "event_time": {"start_ms": config.start_ms, "reached_ms": generator.event_time_ms},
        "sessions_realistic": config.users >= generator.timing["users_for_realistic_sessions"],
        "metrics_port": metrics_port,
    }
    if served is not None:
        summary["predictions_served"], summary["predictions_not_served"] = served.served, served.failed
    log.info("load finished", **{k: v for k, v in summary.items() if k != "topics"})
    return summary


def _pump(events: Any, producer: EventProducer, rate: float, duration_s: float | None, shutdown: Shutdown | None,
          on_progress: Callable[[dict[str, Any]], None] | None, progress_every_s: float,
          generator: LoadGenerator, served: ServedPredictions | None = None) -> tuple[int, str, float, float]:
    """The loop: take a batch of tokens, publish that many events, repeat. Returns (sent, why, start, elapsed)."""
    batch = _UNLIMITED_BATCH if rate <= 0 else max(1, min(_MAX_BATCH, int(rate / 100)))
    iterator = iter(events)
    started = time.monotonic()
    deadline = started + duration_s if duration_s else None
    tokens, refilled = float(batch), started  # start with one batch: the bucket never holds more
    next_progress = started + progress_every_s
    sent, stopped = 0, "exhausted"
    while True:
        now = time.monotonic()
        if shutdown is not None and shutdown.requested:
            stopped = "shutdown"
            break
        if deadline is not None and now >= deadline:
            stopped = "duration"
            break
        if rate > 0:
            tokens = min(float(batch), tokens + (now - refilled) * rate)
            refilled = now
            if tokens < batch:
                wait_s = (batch - tokens) / rate
                if deadline is not None:
                    wait_s = min(wait_s, max(deadline - now, 0.0))
                if shutdown is not None:
                    shutdown.wait(wait_s)
                else:
                    time.sleep(wait_s)
                continue
            tokens -= batch
        chunk = list(islice(iterator, batch))
        if served is not None:
            served.serve(generator.issued)
            generator.issued.clear()
        for spec, record in chunk:
            producer.publish(spec, served.relabel(record) if served is not None and spec is LABELS else record)
        sent += len(chunk)
        producer.poll(0)
        if len(chunk) < batch:
            break  # max_events reached
        if on_progress is not None and now >= next_progress:
            next_progress = now + progress_every_s
            on_progress(_progress(producer, sent, now - started, generator))
    if sent and stopped == "exhausted":
        stopped = "max_events"
    return sent, stopped, started, time.monotonic() - started


def _progress(producer: EventProducer, sent: int, elapsed_s: float, generator: LoadGenerator) -> dict[str, Any]:
    stats = producer.stats()
    return {"events": sent, "elapsed_s": round(elapsed_s, 1), "rate": round(sent / elapsed_s, 1) if elapsed_s else 0.0,
            "delivered": stats["delivered"], "failed": stats["failed"], "late": generator.stats.late}


def _warn_if_sessions_never_end(generator: LoadGenerator, rate: float) -> None:
    needed = generator.timing["users_for_realistic_sessions"]
    if generator.config.users < needed:
        log.info("too few users for the rate: every user is back before a session gap passes, so "
                    "sessions rarely end; raise --users for realistic sessions",
                    users=generator.config.users, rate=rate, users_for_realistic_sessions=needed,
                    visit_every_ms_per_user=generator.timing["visit_every_ms_per_user"])
