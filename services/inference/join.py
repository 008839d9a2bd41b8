"""The learner's join of labels to served predictions by prediction_id, whichever arrives first. Pure.

A served prediction waits for its label until the event-time watermark (latest `ts` seen on either
topic) passes it by `join_window_ms`; a label waits for its prediction `label_wait_s` of wall time
(the prediction log may lag), then is given up as unmatched. `low_water()` is where a restarted
learner must re-read the prediction log from to rebuild exactly the predictions still waiting.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ServedPrediction:
    features: dict[str, Any]
    model_version: str
    score: float
    ts: int
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class PendingLabel:
    prediction_id: str
    label: int
    ts: int
    arrived_s: float  # wall clock when read
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


Match = tuple[PendingLabel, ServedPrediction]


class LabelJoin:
    """Holds each side until the other arrives; every label ends matched, duplicate or expired."""

    def __init__(self, join_window_ms: int, label_wait_s: float, max_predictions: int):
        self.join_window_ms = join_window_ms
        self.label_wait_s = label_wait_s
        self.max_predictions = max_predictions
        self._served: dict[str, ServedPrediction] = {}
        self._by_partition: dict[int, OrderedDict[str, int]] = {}  # partition -> pid -> offset, in read order
        self._labels: OrderedDict[str, PendingLabel] = OrderedDict()
        self._learned: OrderedDict[str, int] = OrderedDict()  # recently learned pid -> ts (duplicate guard)
        self.watermark = 0
        self.evicted = 0

    def add_prediction(self, prediction_id: str, served: ServedPrediction) -> Match | None:
        self.watermark = max(self.watermark, served.ts)
        label = self._labels.pop(prediction_id, None)
        if label is not None:
            self._mark_learned(prediction_id, served.ts)
            return label, served
        if prediction_id in self._learned:
            return None  # re-read after a restart: its label was learned before the snapshot
        self._served[prediction_id] = served
        self._by_partition.setdefault(served.partition, OrderedDict())[prediction_id] = served.offset
        if len(self._served) > self.max_predictions:
            self._drop_oldest()
        return None

    def add_label(self, label: PendingLabel) -> Match | str | None:
        """The match, "duplicate" for a label whose prediction already learned one, or None (held)."""
        self.watermark = max(self.watermark, label.ts)
        if label.prediction_id in self._learned:
            return "duplicate"
        served = self._served.pop(label.prediction_id, None)
        if served is None:
            self._labels[label.prediction_id] = label
            return None
        self._by_partition[served.partition].pop(label.prediction_id, None)
        self._mark_learned(label.prediction_id, served.ts)
        return label, served

    def expire(self, now_s: float) -> tuple[int, list[PendingLabel]]:
        """Forget predictions past the join window; return (how many, labels that waited too long)."""
        cutoff = self.watermark - self.join_window_ms
        gone = 0
        for pids in self._by_partition.values():  # read order is log order, i.e. (nearly) time order
            while pids:
                pid = next(iter(pids))
                if self._served[pid].ts >= cutoff:
                    break
                pids.popitem(last=False)
                del self._served[pid]
                gone += 1
        while self._learned and next(iter(self._learned.values())) < cutoff:
            self._learned.popitem(last=False)
        expired = []
        while self._labels:
            first = next(iter(self._labels.values()))
            if now_s - first.arrived_s < self.label_wait_s:
                break
            expired.append(self._labels.popitem(last=False)[1])
        return gone, expired

    def low_water(self, positions: dict[int, int]) -> dict[int, int]:
        """Per prediction-log partition: offset of the oldest prediction still waiting, else `positions`."""
        out = dict(positions)
        for partition, pids in self._by_partition.items():
            if pids:
                out[partition] = min(pids.values())
        return out

    def pending_labels(self) -> list[PendingLabel]:
        return list(self._labels.values())

    def restore_labels(self, labels: list[PendingLabel], now_s: float) -> None:
        """Labels held at the snapshot; their wait restarts now."""
        for label in labels:
            self._labels[label.prediction_id] = PendingLabel(
                label.prediction_id, label.label, label.ts, now_s, label.partition, label.offset, label.key,
                label.value)

    @property
    def sizes(self) -> dict[str, int]:
        return {"predictions": len(self._served), "labels": len(self._labels)}

    def _mark_learned(self, prediction_id: str, ts: int) -> None:
        self._learned[prediction_id] = ts
        if len(self._learned) > self.max_predictions:
            self._learned.popitem(last=False)

    def _drop_oldest(self) -> None:
        pid = next(iter(self._served))
        served = self._served.pop(pid)
        self._by_partition[served.partition].pop(pid, None)
        self.evicted += 1
