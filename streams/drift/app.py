"""faust-streaming wiring of the drift job: the prediction log in batches, a 1 s timer, SIGTERM handled by faust."""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TP, TransportT

from schemas.topics import PREDICTIONS
from streams.drift.intake import BatchIntake, BulkTransport, ack_offsets
from streams.drift.job import DriftRuntime
from streams.kafka.security import faust_credentials
from streams.runtime.lifecycle import serve_metrics
from streams.runtime.logging import configure_logging
from streams.settings import DriftSettings, load_settings


def build_app(settings: DriftSettings, runtime: DriftRuntime) -> faust.App:
    """The faust app: group `streamml-drift`, raw bytes in (our own Avro serde), no web server, no tables
    (state lives in Redis, saved before faust may commit a batch's offsets). Records arrive in bulk
    (`streams.drift.intake`), are counted a batch at a time and acked after."""
    intake = BatchIntake(PREDICTIONS.name, settings.drift_batch, limit=4 * settings.drift_batch)

    class DriftApp(faust.App):
        def _new_transport(self) -> TransportT:
            return BulkTransport(self.conf.broker_consumer, self)

        async def on_stop(self) -> None:
            await super().on_stop()
            runtime.close()  # states saved, drift metrics flushed

    app = DriftApp(
        "streamml-drift",
        broker=[f"kafka://{hostport}" for hostport in settings.kafka_bootstrap_servers.split(",")],
        web_enabled=False,
        store="memory://",
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,  # Tansu: a group join takes ~23 s with the defaults
        broker_heartbeat_interval=0.5,
        producer_acks=-1,
        broker_max_poll_records=settings.drift_batch,
        stream_buffer_maxsize=4 * settings.drift_batch,
        broker_credentials=faust_credentials(settings.kafka_client),
    )
    app.intake = intake  # type: ignore[attr-defined]  # read by BulkConsumer's drain loop
    app.topics.add(app.topic(PREDICTIONS.name, key_serializer="raw", value_serializer="raw", acks=True))

    @app.task
    async def count() -> None:
        while not app.should_stop:
            chunks = await intake.take(settings.drift_batch_within_s)
            if chunks:
                runtime.process([(tp.partition, r.offset, r.key, r.value) for tp, records in chunks for r in records])
                for tp, records in chunks:  # faust may commit these offsets now: their counts are saved
                    ack_offsets(app.consumer, tp, [r.offset for r in records])

    @app.on_partitions_revoked.connect
    async def revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        intake.drop(revoked)

    @app.timer(interval=1.0)
    async def close_windows() -> None:
        runtime.tick()

    return app


def _highwater(app: faust.App, partition: int) -> int | None:
    try:
        return app.consumer.highwater(TP(PREDICTIONS.name, partition))
    except Exception:  # noqa: BLE001 - not assigned or not fetched yet: no lag information
        return None


def main() -> None:
    settings = load_settings(DriftSettings)
    log = configure_logging("drift", settings.log_level, settings.log_format)
    port = serve_metrics(settings.drift_metrics_port, settings.metrics_host)
    log.info("drift job starting", window_s=settings.drift_window_s, lateness_s=settings.drift_lateness_s,
             metrics_port=port, settings=settings.redacted())
    runtime = DriftRuntime(settings)
    app = build_app(settings, runtime)
    runtime.highwater = lambda partition: _highwater(app, partition)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True, override_logging=False)
    worker.execute_from_commandline()
