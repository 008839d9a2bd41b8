"""Process entry of the feature flow: settings -> logging/metrics -> Bytewax with recovery -> exit on SIGTERM."""

from __future__ import annotations

import signal
from types import FrameType

from bytewax._bytewax import cli_main
from bytewax.recovery import RecoveryConfig

from streams.features.shard import ENGINE
from streams.features.state import native_state
from streams.flows.features import FlowConfig, build_flow, epoch
from streams.flows.recovery import open_store
from streams.runtime.lifecycle import serve_metrics, tune_gc
from streams.runtime.logging import configure_logging
from streams.settings import FeatureFlowSettings, load_settings

_stopping = False


def _stop(signum: int, frame: FrameType | None) -> None:
    # Bytewax checks Python signals between activations; raising stops the dataflow. Nothing is lost:
    # the recovery store resumes from the last snapshot and every sink is idempotent.
    global _stopping
    _stopping = True
    raise KeyboardInterrupt


def recovery_config(settings: FeatureFlowSettings) -> RecoveryConfig | None:
    """Bytewax recovery under $STREAMML_HOME/recovery/features, created on first start."""
    if not settings.features_recovery:
        return None
    return open_store(settings.recovery_dir, settings.features_recovery_partitions)


def main() -> None:
    settings = load_settings(FeatureFlowSettings)
    log = configure_logging("features", settings.log_level, settings.log_format)
    port = serve_metrics(settings.features_metrics_port, settings.metrics_host)
    signal.signal(signal.SIGTERM, _stop)
    addresses = settings.features_addresses.split(";") if settings.features_addresses else None
    engine = ENGINE
    log.info("feature flow starting", metrics_port=port, engine=engine, settings=settings.redacted())
    if engine != "native":
        log.warning("feature state runs on the pure-Python engine, about half as fast: "
                    + ("as STREAMML_FEATURES_ENGINE asks" if native_state is not None else
                       "the native one was not built (apt-get install g++, then pip install -e . again)"))
    flow = build_flow(FlowConfig.from_settings(settings))
    tune_gc(settings.features_gc_thresholds)  # the flow's state is millions of small containers
    if native_state is not None:
        native_state.keep_arenas(settings.features_arena_cache_mb)  # polls' objects come and go a poll at a time
    try:
        cli_main(
            flow,
            workers_per_process=settings.features_workers,
            process_id=settings.features_process_id,
            addresses=addresses,
            epoch_interval=epoch(settings),
            recovery_config=recovery_config(settings),
        )
    except BaseException as exc:  # Bytewax wraps the KeyboardInterrupt our SIGTERM handler raised
        if not (_stopping or isinstance(exc, KeyboardInterrupt)):
            raise
    log.info("feature flow stopped")


if __name__ == "__main__":
    main()
