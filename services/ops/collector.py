"""The ops loop: every interval, scrape each watched process's /metrics, measure consumer lag, and
record one round into the history the dashboard and `streamml status` read."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import structlog

from services.ops import metrics
from services.ops.history import History, SeriesKey, series_key
from services.ops.scrape import fetch, parse, stack_targets
from services.ops.settings import OpsSettings
from services.ops.views import (
    DRIFT_ALERTS,
    FRESHNESS,
    LAG_MESSAGES,
    LAG_SECONDS,
    PSI,
    TARGET_UP,
    sample_names,
)
from services.stack.supervisor import Supervisor
from streams.kafka.lag import LagProbe, PartitionLag

log = structlog.get_logger("ops")


@dataclass
class TargetState:
    url: str
    up: bool = False
    error: str | None = None


class Collector:
    """Owns the history and the latest lag; `start()` runs the loop in a thread until `stop()`."""

    def __init__(self, settings: OpsSettings):
        self.settings = settings
        self.history = History(settings.history_rounds)
        self._keep = sample_names()
        self._targets: dict[str, TargetState] = {}
        self._lag: list[PartitionLag] = []
        self._lag_error: str | None = None
        self._probe: LagProbe | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ops-scrape")

    # --- the loop --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ops-collector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._probe is not None:
            self._probe.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.collect_once()
            except Exception as exc:  # never let one bad round end the exporter
                log.warning("ops round failed", error=str(exc))
            metrics.COLLECT_SECONDS.observe(time.monotonic() - started)
            self._stop.wait(max(self.settings.ops_interval_s - (time.monotonic() - started), 0.05))

    def collect_once(self, now: float | None = None) -> None:
        """Scrape every target and measure lag (concurrently), then record one round."""
        targets = self.targets()
        scrapes = {name: self._pool.submit(self._scrape, name, url) for name, url in targets.items()}
        lag = self._measure_lag()
        samples: dict[SeriesKey, float] = {}
        states = {}
        for name, future in scrapes.items():
            state = TargetState(targets[name])
            try:
                samples.update(future.result())
                state.up = True
            except Exception as exc:
                state.error = f"{type(exc).__name__}: {exc}"
                metrics.ERRORS.labels("scrape").inc()
            states[name] = state
            samples[series_key(TARGET_UP, {"target": name})] = 1.0 if state.up else 0.0
        for row in lag:
            labels = {"group": row.group, "topic": row.topic, "partition": str(row.partition), "target": "ops"}
            samples[series_key(LAG_MESSAGES, labels)] = float(row.messages)
            samples[series_key(LAG_SECONDS, labels)] = row.seconds
        with self._lock:
            self._targets, self._lag = states, lag
        self.history.record(time.time() if now is None else now, samples)

    def targets(self) -> dict[str, str]:
        configured = self.settings.targets()
        if configured:
            return configured
        records = Supervisor(self.settings.run_dir, self.settings.log_dir).records()
        return {name: url for name, url in stack_targets(records).items() if name != "ops"}

    def _scrape(self, name: str, url: str) -> dict[SeriesKey, float]:
        return parse(fetch(url, self.settings.ops_scrape_timeout_s), self._keep, name)

    def _measure_lag(self) -> list[PartitionLag]:
        try:
            if self._probe is None:
                self._probe = LagProbe(self.settings.kafka_config(), self.settings.ops_group_prefix,
                                       timeout_s=self.settings.ops_scrape_timeout_s)
            lag = self._probe.measure()
            self._lag_error = None
            return lag
        except Exception as exc:  # broker down: no lag this round (a gap on the charts), say why
            self._lag_error = f"{type(exc).__name__}: {exc}"
            metrics.ERRORS.labels("lag").inc()
            return []

    # --- what readers see ------------------------------------------------------------------------
    def latest(self) -> tuple[list[PartitionLag], dict[str, bool]]:
        with self._lock:
            return list(self._lag), {name: s.up for name, s in self._targets.items()}

    def summary(self, now: float | None = None) -> dict:
        """Targets, lag per group and partition, freshness, latest drift: what `streamml status` prints."""
        now = time.time() if now is None else now
        with self._lock:
            targets = [{"name": n, "url": s.url, "up": s.up, "error": s.error} for n, s in sorted(self._targets.items())]
            lag = list(self._lag)
            lag_error = self._lag_error
        groups: dict[str, dict] = {}
        for row in lag:
            g = groups.setdefault(row.group, {"group": row.group, "messages": 0, "seconds": 0.0, "partitions": 0})
            g["messages"] += row.messages
            g["seconds"] = max(g["seconds"], row.seconds)
            g["partitions"] += 1
        frame = self.history.frame(now - 600, {n for q in (*FRESHNESS, PSI, DRIFT_ALERTS) for n in q.names()})
        freshness = {s.label: _last(s.values) for q in FRESHNESS for s in q.evaluate(frame)}
        drift = []
        for labels, values in frame.of(PSI.metric):
            alert = next((_last(v) for lab, v in frame.of(DRIFT_ALERTS.metric) if lab == labels), None)
            drift.append({"model": labels.get("model"), "version": labels.get("version"),
                          "feature": labels.get("feature"), "psi": _last(values), "alert": bool(alert)})
        return {
            "generated_at": now,
            "targets": targets,
            "lag_error": lag_error,
            "groups": sorted(groups.values(), key=lambda g: g["group"]),
            "lag": [asdict(row) for row in lag],
            "freshness_ms": freshness,
            "drift": sorted((d for d in drift if d["psi"] is not None), key=lambda d: (d["model"], d["feature"])),
        }


def _last(values) -> float | None:
    """The newest finite value of a series, or None."""
    for v in values[::-1]:
        if not math.isnan(v):
            return round(float(v), 6)
    return None
