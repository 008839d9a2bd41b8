"""The learner: joins each label to the features served for its prediction (read from the prediction log,
never re-read from Redis), learns test-then-train, and snapshots the model into the store.

Restart-safe without a consumer group: each snapshot records the `labels` offsets it learned up to,
the labels it still holds, and the prediction-log offsets of the oldest prediction still waiting; a
restarted learner resumes from exactly there, so no label is learned twice or lost. Offsets are also
committed to the group `streamml-learner-{model}` so lag tools see the learner like any consumer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from river import metrics as river_metrics

from schemas.errors import BrokerError, DecodeError
from schemas.registry import RegistryClient
from schemas.serde import TopicSerde
from schemas.topics import LABELS, PREDICTIONS
from services.inference import metrics
from services.inference.join import LabelJoin, PendingLabel, ServedPrediction
from services.inference.models import build_model, score
from services.inference.settings import LearnerSettings
from services.inference.store import ModelStore
from streams.kafka.admin import topic_partitions
from streams.kafka.dlq import DeadLetter, DeadLetterPublisher
from streams.runtime.lifecycle import Shutdown, serve_metrics
from streams.runtime.logging import configure_logging, get_logger
from streams.settings import load_settings

log = get_logger(__name__)
_POLL_BATCH = 2000


@dataclass
class LearnerState:
    """Everything beside the model that a restart needs (pickled next to each snapshot)."""

    roc_auc: Any = field(default_factory=river_metrics.ROCAUC)
    log_loss: Any = field(default_factory=river_metrics.LogLoss)
    labels_learned: int = 0
    pending_labels: list[PendingLabel] = field(default_factory=list)


class Learner:
    """One learner per model name; `step()` processes one poll, `run()` loops until shutdown."""

    def __init__(self, settings: LearnerSettings):
        self.settings = settings
        self.name = settings.model_name
        self.store = ModelStore(redis.Redis.from_url(settings.redis_url), self.name)
        registry = RegistryClient.shared(settings.schema_registry_url)
        self.serdes = {LABELS.name: TopicSerde(LABELS, registry), PREDICTIONS.name: TopicSerde(PREDICTIONS, registry)}
        self.join = LabelJoin(int(settings.learner_join_window_s * 1000), settings.learner_label_wait_s,
                              settings.learner_max_pending)
        self.dead_letters = DeadLetterPublisher(
            Producer(settings.kafka_config(**{"client.id": "streamml-learner", "enable.idempotence": True})),
            on_sent=lambda letter: metrics.LABELS.labels(self.name, letter.reason).inc()
            if letter.topic == LABELS.name else None)
        self.consumer = Consumer(settings.kafka_config(**{
            "group.id": f"streamml-learner-{self.name}", "enable.auto.commit": False,
            "client.id": "streamml-learner", "auto.offset.reset": "earliest"}))
        self.positions: dict[tuple[str, int], int] = {}
        self.parent: str | None = None
        self.model, self.state, start = self._resume()
        self._assign(start)
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()

    # --- startup ----------------------------------------------------------------------------------
    def _resume(self) -> tuple[Any, LearnerState, dict[tuple[str, int], int]]:
        """The newest snapshot of this model kind with its offsets, or a fresh model from the beginning."""
        latest = self.store.latest()
        meta = self.store.meta(latest) if latest else None
        if meta and meta.get("kind") == self.settings.model_kind and not meta.get("pruned"):
            state = self.store.learner_state(latest) or LearnerState()
            self.join.restore_labels(state.pending_labels, time.monotonic())
            self.parent = latest
            start = {(LABELS.name, int(p)): o for p, o in meta.get("labels_offsets", {}).items()}
            start |= {(PREDICTIONS.name, int(p)): o for p, o in meta.get("predictions_offsets", {}).items()}
            log.info("learner resumes", model=self.name, version=latest, labels_learned=state.labels_learned,
                     pending_labels=len(state.pending_labels))
            return self.store.load(latest), state, start
        if meta:
            log.warning("newest snapshot is another kind; learning a new model from the start of the logs",
                        stored=meta.get("kind"), configured=self.settings.model_kind)
        return build_model(self.settings.model_kind), LearnerState(), {}

    def _assign(self, start: dict[tuple[str, int], int]) -> None:
        admin = AdminClient(self.settings.kafka_config())
        deadline = time.monotonic() + 60
        while True:
            parts = topic_partitions(admin, self.settings.kafka_bootstrap_servers)
            if LABELS.name in parts and PREDICTIONS.name in parts:
                break
            if time.monotonic() > deadline:
                raise BrokerError(f"topics {LABELS.name!r} and {PREDICTIONS.name!r} do not exist; run "
                                  "`streamml provision` (or `streamml up`) first")
            time.sleep(1)
        assignment = [TopicPartition(t, p, start.get((t, p), OFFSET_BEGINNING))
                      for t in (LABELS.name, PREDICTIONS.name) for p in range(parts[t])]
        self.consumer.assign(assignment)
        for tp in assignment:
            if tp.offset >= 0:
                self.positions[(tp.topic, tp.partition)] = tp.offset

    # --- the loop ---------------------------------------------------------------------------------
    def run(self, shutdown: Shutdown) -> None:
        while not shutdown.requested:
            self.step()
        self.close()

    def step(self, timeout_s: float = 0.2) -> int:
        """One poll: join, learn, expire, maybe snapshot. Returns the records read."""
        messages = self.consumer.consume(_POLL_BATCH, timeout_s)
        for msg in messages:
            if msg.error():
                log.warning("consumer error", error=msg.error().str())
                continue
            self.positions[(msg.topic(), msg.partition())] = msg.offset() + 1
            if msg.topic() == PREDICTIONS.name:
                self._on_prediction(msg)
            else:
                self._on_label(msg)
        _, expired = self.join.expire(time.monotonic())
        for label in expired:
            self.dead_letters.publish(DeadLetter(
                LABELS.name, label.partition, label.offset, label.key, label.value, "no_prediction",
                f"no logged prediction {label.prediction_id!r} of model {self.name!r} arrived within "
                f"{self.settings.learner_label_wait_s:g}s"))
        sizes = self.join.sizes
        metrics.PENDING.labels(self.name, "predictions").set(sizes["predictions"])
        metrics.PENDING.labels(self.name, "labels").set(sizes["labels"])
        if self._since_snapshot >= self.settings.learner_snapshot_labels or (
                self._since_snapshot and time.monotonic() - self._last_snapshot >= self.settings.learner_snapshot_s):
            self.snapshot()
        return len(messages)

    def _decode(self, msg: Any) -> dict[str, Any] | None:
        try:
            return self.serdes[msg.topic()].deserialize(msg.value(), msg.partition(), msg.offset())
        except DecodeError as exc:
            self.dead_letters.publish(DeadLetter.from_error(exc, msg.key(), msg.value(), msg.timestamp()[1]))
            return None

    def _on_prediction(self, msg: Any) -> None:
        record = self._decode(msg)
        if record is None or record["model"] != self.name:
            return
        served = ServedPrediction(record["features"], record["model_version"], record["score"],
                                  record["ts"], msg.partition(), msg.offset())
        match = self.join.add_prediction(record["prediction_id"], served)
        if match is not None:
            self._learn(*match)

    def _on_label(self, msg: Any) -> None:
        record = self._decode(msg)
        if record is None:
            return
        if record["label"] not in (0, 1):
            self.dead_letters.publish(DeadLetter(
                LABELS.name, msg.partition(), msg.offset(), msg.key(), msg.value(), "invalid_label",
                f"label must be 0 or 1, got {record['label']}"))
            return
        pending = PendingLabel(record["prediction_id"], record["label"], record["ts"], time.monotonic(),
                               msg.partition(), msg.offset(), msg.key(), msg.value())
        match = self.join.add_label(pending)
        if match == "duplicate":
            metrics.LABELS.labels(self.name, "duplicate").inc()
        elif match is not None:
            self._learn(*match)

    def _learn(self, label: PendingLabel, served: ServedPrediction) -> None:
        y = bool(label.label)
        p = score(self.model, served.features)  # test, then train: an honest running estimate
        self.state.roc_auc.update(y, p)
        self.state.log_loss.update(y, p)
        self.model.learn_one(served.features, y)
        self.state.labels_learned += 1
        self._since_snapshot += 1
        metrics.LABELS.labels(self.name, "learned").inc()

    # --- snapshots --------------------------------------------------------------------------------
    def snapshot(self) -> str:
        """Save the model as a new version with the offsets it reflects; activate it unless pinned."""
        label_pos = {p: o for (t, p), o in self.positions.items() if t == LABELS.name}
        pred_pos = {p: o for (t, p), o in self.positions.items() if t == PREDICTIONS.name}
        self.state.pending_labels = self.join.pending_labels()
        auc, loss = self.state.roc_auc.get(), self.state.log_loss.get()
        meta = {"kind": self.settings.model_kind, "labels_learned": self.state.labels_learned,
                "labels_offsets": {str(p): o for p, o in label_pos.items()},
                "predictions_offsets": {str(p): o for p, o in self.join.low_water(pred_pos).items()},
                "roc_auc": auc, "log_loss": loss, "parent": self.parent}
        self.dead_letters.ensure_delivered()  # the offsets saved below pass the records they stand for
        version = self.store.save(self.model, meta, keep=self.settings.model_keep_versions,
                                  learner_state=self.state)
        self.parent = version
        activated = self.settings.learner_auto_activate and self.store.activate_unless_pinned(version)
        self.consumer.commit(offsets=[TopicPartition(LABELS.name, p, o) for p, o in label_pos.items()],
                             asynchronous=True)
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        metrics.SNAPSHOTS.labels(self.name).inc()
        metrics.ROC_AUC.labels(self.name).set(auc)
        metrics.LOG_LOSS.labels(self.name).set(loss)
        if activated:
            metrics.ACTIVE_VERSION.labels(self.name).set(int(version[1:]))
        log.info("model snapshot", model=self.name, version=version, activated=activated,
                 labels_learned=self.state.labels_learned, roc_auc=round(auc, 4), log_loss=round(loss, 4))
        return version

    def close(self) -> None:
        if self._since_snapshot:
            self.snapshot()
        left = self.dead_letters.flush(10)
        if left:
            log.warning("dead letters undelivered at shutdown", undelivered=left)
        self.consumer.close()


def main() -> None:
    settings = load_settings(LearnerSettings)
    log_ = configure_logging("learner", settings.log_level, settings.log_format)
    shutdown = Shutdown()
    port = serve_metrics(settings.learner_metrics_port, settings.metrics_host)
    log_.info("learner starting", model=settings.model_name, kind=settings.model_kind, metrics_port=port,
              settings=settings.redacted())
    Learner(settings).run(shutdown)
    log_.info("learner stopped")
