"""The drift job: a faust-streaming app that bins the prediction log into event-time windows per model
version and, when a window closes, emits PSI per feature and for the score.

Per source partition the job keeps a `PartitionState` (open windows, highest offset applied, event-time
watermark) and saves it to Redis before faust may commit the batch's offsets, so a restart resumes
with the state that matches what it re-reads; re-read records (offset <= high water) are skipped.
The watermark is the slowest active partition's event time (as in Flink), so catching up never makes
records late. Windows close on a 1 s timer driven by it (faust's own `on_window_close` only fires when a
later event arrives, faust-streaming#250); when no prediction arrives for `idle_close_s`, the wall
clock moves the watermark so a quiet stream still closes its windows. One job instance owns all
partitions (it merges per-partition parts at close); it is one process by design (>= 50k/s target).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Gauge, Histogram

from schemas.registry import RegistryClient
from schemas.serde import Decoded, TopicSerde
from schemas.topics import DRIFT_METRICS, PREDICTIONS
from streams.drift.autoref import FirstWindows
from streams.drift.batch import PredictionBatch
from streams.drift.psi import SustainedAlerts
from streams.drift.reference import Profile, ProfileStore
from streams.drift.windows import PartitionState, apply, close_due, window_metrics, window_start
from streams.kafka.admin import topic_partitions
from streams.kafka.dlq import DeadLetter, DeadLetterPublisher
from streams.runtime.logging import get_logger
from streams.settings import DriftSettings

log = get_logger(__name__)

RECORDS = Counter("streamml_drift_records_total", "Prediction log records by outcome: counted, late, "
                  "unprofiled (no reference yet), duplicate (re-read after restart), invalid, reference (sampled for an "
                  "automatic reference).", ["outcome"])
PSI = Gauge("streamml_drift_psi_ratio", "PSI of the latest closed window.", ["model", "version", "feature"])
ALERT = Gauge("streamml_drift_alert", "1 while critical for N consecutive windows.", ["model", "version", "feature"])
WINDOWS = Counter("streamml_drift_windows_closed_total", "Windows closed.", ["model", "version"])
CLOSE_DELAY = Histogram("streamml_drift_close_delay_seconds", "Wall time from window end (+lateness) to metrics.",
                        buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300))


def state_key(partition: int) -> str:
    return f"drift:state:{PREDICTIONS.name}:{partition}"


def latest_key(model: str, feature: str) -> str:
    return f"drift:{model}:{feature}"


def history_key(model: str, feature: str) -> str:
    return f"drift:history:{model}:{feature}"


class DriftRuntime:
    """Everything but faust: decode, count, persist, close and emit. Driven by `process` and `tick`."""

    def __init__(self, settings: DriftSettings, redis_client: redis.Redis | None = None,
                 highwater: Callable[[int], int | None] | None = None):
        self.settings = settings
        self.highwater = highwater  # partition -> end offset as the consumer last saw it (lag awareness)
        self.window_ms = int(settings.drift_window_s * 1000)
        self.lateness_ms = int(settings.drift_lateness_s * 1000)
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url)
        registry = RegistryClient.shared(settings.schema_registry_url)
        self.serde = TopicSerde(PREDICTIONS, registry)
        self.metrics_serde = TopicSerde(DRIFT_METRICS, registry)
        self.producer = Producer(settings.kafka_config(**{"client.id": "streamml-drift", "enable.idempotence": True,
                                                          "linger.ms": 20}))
        self.dead_letters = DeadLetterPublisher(self.producer)
        self.profiles = ProfileStore(self.redis)
        self._profiles: dict[tuple[str, str], tuple[float, Profile | None]] = {}
        self.states: dict[int, PartitionState] = {}
        self.alerts = SustainedAlerts(settings.drift_alert_windows)
        self.alerts.streak = self._load_streaks()
        self._last_record_s = time.monotonic()
        self._received = False
        # partition -> wall time of its latest record (absent: none since the start)
        self._seen_s: dict[int, float] = {}
        self._first_record_s: float | None = None
        partitions = topic_partitions(AdminClient(settings.kafka_config()), settings.kafka_bootstrap_servers)
        for partition in range(partitions.get(PREDICTIONS.name, 0)):
            self.state(partition)  # every partition's saved state, so each holds the watermark from the start
        self._warned: set[tuple[str, str]] = set()
        self.first_windows = FirstWindows(
            self.redis, self.profiles, windows=settings.drift_reference_windows, window_ms=self.window_ms,
            sample_max=settings.drift_reference_sample) if settings.drift_reference_windows else None

    # --- counting -----------------------------------------------------------------------------------
    def watermark(self) -> int:
        """The slowest active partition's event time: a partition that is catching up holds windows open
        (the fastest one's would close them under it). A partition quiet for `idle_close_s` stops holding;
        one that has not delivered since the start gets that long after the job's first record."""
        now = time.monotonic()
        idle = self.settings.drift_idle_close_s

        def active(partition: int) -> bool:
            if self.highwater is not None:
                end = self.highwater(partition)
                if end is not None and end > self.states[partition].high_water + 1:
                    return True  # records are waiting in this partition: it is behind, not idle
            seen = self._seen_s.get(partition)
            if seen is None:
                return self._first_record_s is None or now - self._first_record_s < idle
            return now - seen < idle

        marks = [s.watermark for p, s in self.states.items() if active(p)]
        return min(marks) if marks else max((s.watermark for s in self.states.values()), default=0)

    def state(self, partition: int) -> PartitionState:
        state = self.states.get(partition)
        if state is None:
            raw = self.redis.get(state_key(partition))
            state = self.states[partition] = pickle.loads(raw) if raw else PartitionState()
        return state

    def process(self, messages: list[tuple[int, int, bytes | None, bytes | None]]) -> dict[str, int]:
        """Count (partition, offset, key, value) records; saves every touched partition's state."""
        invalid_upto: dict[int, int] = {}
        totals = {"counted": 0, "late": 0, "unprofiled": 0, "duplicate": 0, "invalid": 0, "reference": 0}
        high = {p: self.state(p).high_water for p in {m[0] for m in messages}}
        fresh = [m for m in messages if m[1] > high[m[0]]]  # else re-read after a restart: counted before
        totals["duplicate"] = len(messages) - len(fresh)
        decoded = self.serde.deserialize_many([m[3] for m in fresh])
        for i, exc in decoded.errors.items():
            partition, offset, key, value = fresh[i]
            self.dead_letters.publish(DeadLetter.from_error(exc.located(PREDICTIONS.name, partition, offset), key, value))
            invalid_upto[partition] = max(invalid_upto.get(partition, -1), offset)
        totals["invalid"] = len(decoded.errors)
        watermark = self.watermark()
        for partition, batch in self._by_partition(fresh, decoded).items():
            batch, referenced = self._reference_period(batch)
            if referenced:
                totals["reference"] += len(referenced)
                invalid_upto[partition] = max(invalid_upto.get(partition, -1), max(referenced))
            result = apply(self.state(partition), batch, window_ms=self.window_ms, lateness_ms=self.lateness_ms,
                           watermark=watermark, profile_of=self.profile)
            if result.late:
                originals = {m[1]: m for m in fresh if m[0] == partition}
                for offset, record in result.late:
                    key, value = originals[offset][2:]
                    self.dead_letters.publish(DeadLetter(
                        PREDICTIONS.name, partition, offset, key, value, "late",
                        f"window {window_start(record['ts'], self.window_ms)} already closed (lateness "
                        f"{self.lateness_ms} ms)"))
            for model, version in result.unprofiled:
                self._warn_unprofiled(model, version)
            totals["counted"] += result.counted
            totals["late"] += len(result.late)
            totals["unprofiled"] += sum(result.unprofiled.values())
            totals["duplicate"] += result.duplicates
        # after apply: a bad (or reference-period) record must not hide earlier good ones
        for partition, offset in invalid_upto.items():
            state = self.state(partition)
            state.high_water = max(state.high_water, offset)
        if totals["invalid"] or totals["late"]:
            self.dead_letters.ensure_delivered()  # the saved high water (and faust's commit) passes them
        self._save({p for p, *_ in messages})
        for outcome, n in totals.items():
            if n:
                RECORDS.labels(outcome).inc(n)
        if messages:
            self._received = True
            self._last_record_s = time.monotonic()
            if self._first_record_s is None:
                self._first_record_s = self._last_record_s
            for partition in {m[0] for m in fresh}:
                self._seen_s[partition] = self._last_record_s
        return totals

    @staticmethod
    def _by_partition(fresh: list[tuple[int, int, bytes | None, bytes | None]], decoded: Decoded
                      ) -> dict[int, PredictionBatch]:
        """The decoded records of each partition as one batch: columns straight from the bulk decode when a
        partition's records all came from one bulk batch (the usual case), else built from dicts."""
        partition_of = np.fromiter((m[0] for m in fresh), dtype=np.int64, count=len(fresh))
        offsets = np.fromiter((m[1] for m in fresh), dtype=np.int64, count=len(fresh))
        source = np.full(len(fresh), -1, dtype=np.int64)  # index into decoded.columns, -1: a dict (or an error)
        row_in_bulk = np.full(len(fresh), -1, dtype=np.int64)
        for n, (indices, _) in enumerate(decoded.columns):
            source[indices] = n
            row_in_bulk[indices] = np.arange(len(indices))
        bulk = [PredictionBatch.from_arrow(offsets[indices], batch) for indices, batch in decoded.columns]
        out: dict[int, PredictionBatch] = {}
        for partition in np.unique(partition_of).tolist():
            mine = np.flatnonzero(partition_of == partition)
            sources = set(source[mine].tolist())
            if len(sources) == 1 and -1 not in sources:
                whole = bulk[sources.pop()]
                keep = np.zeros(len(whole), dtype=bool)
                keep[row_in_bulk[mine]] = True
                out[partition] = whole.subset(keep)
                continue
            items = []
            for i in mine.tolist():
                if i in decoded.records:
                    items.append((int(offsets[i]), decoded.records[i]))
                elif source[i] >= 0:
                    items.append((int(offsets[i]), bulk[source[i]].records([row_in_bulk[i]])[0]))
            if items:
                out[partition] = PredictionBatch.from_records(items)
        return out

    def _reference_period(self, batch: PredictionBatch) -> tuple[PredictionBatch, list[int]]:
        """Split off the records that belong to an automatic reference period (sampled, not measured):
        returns (the records to measure, the offsets of those taken for the reference)."""
        if self.first_windows is None or not len(batch):
            return batch, []
        taken = np.zeros(len(batch), dtype=bool)
        for code, (model, version) in enumerate(batch.versions):
            of_version = batch.version_codes == code
            profile = self.profile(model, version)
            if profile is None:
                rows = np.flatnonzero(of_version)
                took, built = self.first_windows.take(batch.records(rows))
                for done in built:
                    self._profiles[(done.model, done.model_version)] = (time.monotonic(), done)
                    log.info("automatic reference built", model=done.model, version=done.model_version,
                             source=done.source)
                taken[rows[np.asarray(took, dtype=bool)]] = True
                profile = self.profile(model, version)
            if profile is not None and profile.automatic:
                taken |= of_version & (batch.ts < (profile.until_ms or 0))
        if not taken.any():
            return batch, []
        return batch.subset(~taken), batch.offsets[taken].tolist()

    def profile(self, model: str, version: str) -> Profile | None:
        """The stored reference of a model version (re-checked every 10 s while there is none)."""
        cached = self._profiles.get((model, version))
        if cached is not None and (cached[1] is not None or time.monotonic() - cached[0] < 10.0):
            return cached[1]
        profile = self.profiles.load(model, version)
        self._profiles[(model, version)] = (time.monotonic(), profile)
        return profile

    # --- closing --------------------------------------------------------------------------------------
    def tick(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Close every window the watermark has passed; emit and store their metrics."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        watermark = self.watermark()
        if self._received and time.monotonic() - self._last_record_s >= self.settings.drift_idle_close_s:
            # a quiet stream still closes its windows; never while starting (joining the group, nothing read
            # yet), when quiet only means "not consuming yet" and the backlog may hold older records
            watermark = max(watermark, now_ms - self.lateness_ms)
        closed = close_due(self.states.values(), window_ms=self.window_ms, lateness_ms=self.lateness_ms,
                           watermark=watermark)
        emitted: list[dict[str, Any]] = []
        for window, counts in closed.items():
            profile = self.profile(window[0], window[1])
            if profile is None:
                continue
            records = window_metrics(window, counts, profile, self.window_ms, self.alerts)
            self._emit(records)
            WINDOWS.labels(window[0], window[1]).inc()
            CLOSE_DELAY.observe(max(0.0, (now_ms - (window[2] + self.window_ms + self.lateness_ms)) / 1000))
            emitted += records
        if closed:
            # The saved state no longer holds these windows: their metrics must be in Kafka first, or a
            # kill -9 right after the close would lose them (a restart re-emits only unsaved closes).
            left = self.producer.flush(30)
            if left:
                log.error("drift metrics not acknowledged by Kafka within 30 s; saving the closed windows anyway",
                          undelivered=left)
            self._save(set(self.states))
            self._save_streaks()
        return emitted

    def _emit(self, records: list[dict[str, Any]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for r in records:
            self.producer.produce(DRIFT_METRICS.name, key=f"{r['model']}/{r['feature']}".encode(),
                                  value=self.metrics_serde.serialize(r))
            summary = {k: ("" if r[k] is None else str(r[k])) for k in
                       ("model_version", "window_start", "window_end", "psi", "z_score", "n", "severity", "alert")}
            pipe.hset(latest_key(r["model"], r["feature"]), mapping=summary)
            pipe.zadd(history_key(r["model"], r["feature"]),
                      {f"{r['window_end']}:{r['model_version']}:{r['psi']!r}:{r['severity']}:{int(r['alert'])}":
                       r["window_end"]})
            PSI.labels(r["model"], r["model_version"], r["feature"]).set(r["psi"])
            ALERT.labels(r["model"], r["model_version"], r["feature"]).set(1 if r["alert"] else 0)
            if r["alert"]:
                log.warning("drift alert", model=r["model"], version=r["model_version"], feature=r["feature"],
                            psi=round(r["psi"], 4), windows=self.settings.drift_alert_windows)
        pipe.execute()
        self.producer.poll(0)

    # --- persistence ----------------------------------------------------------------------------------
    def _save(self, partitions: set[int]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for partition in partitions:
            pipe.set(state_key(partition), pickle.dumps(self.state(partition), protocol=pickle.HIGHEST_PROTOCOL))
        pipe.execute()

    def _load_streaks(self) -> dict[tuple[str, str], int]:
        raw = self.redis.hgetall("drift:streaks")
        return {tuple(k.decode().rsplit("|", 1)): int(v) for k, v in raw.items()}  # type: ignore[misc]

    def _save_streaks(self) -> None:
        if self.alerts.streak:
            self.redis.hset("drift:streaks", mapping={f"{m}|{f}": n for (m, f), n in self.alerts.streak.items()})

    def _warn_unprofiled(self, model: str, version: str) -> None:
        if (model, version) not in self._warned:
            self._warned.add((model, version))
            log.warning("no reference profile for this model version; its predictions are not measured",
                        model=model, version=version, fix="streamml drift reference --model " + model)

    def close(self) -> None:
        self._save(set(self.states))
        left = self.producer.flush(10)
        if left:
            log.warning("drift metrics undelivered at shutdown", undelivered=left)
