"""The learner's label <-> prediction join: either order, duplicates, expiry, restart position."""

from __future__ import annotations

from services.inference.join import LabelJoin, PendingLabel, ServedPrediction


def _served(ts: int, partition: int = 0, offset: int = 0) -> ServedPrediction:
    return ServedPrediction({"user.views_1h": 1}, "v000001", 0.5, ts, partition, offset)


def _label(pid: str, ts: int = 0, arrived: float = 0.0) -> PendingLabel:
    return PendingLabel(pid, 1, ts, arrived, 0, 7, b"k", b"v")


def test_label_after_prediction_matches_at_once() -> None:
    join = LabelJoin(60_000, 30.0, 100)
    assert join.add_prediction("p1", _served(1000)) is None
    label, served = join.add_label(_label("p1", 2000))
    assert label.prediction_id == "p1" and served.ts == 1000
    assert join.sizes == {"predictions": 0, "labels": 0}


def test_label_before_prediction_waits_for_it() -> None:
    join = LabelJoin(60_000, 30.0, 100)
    assert join.add_label(_label("p1", 2000)) is None
    label, served = join.add_prediction("p1", _served(1000))
    assert label.prediction_id == "p1" and served.model_version == "v000001"


def test_a_second_label_for_a_learned_prediction_is_a_duplicate() -> None:
    join = LabelJoin(60_000, 30.0, 100)
    join.add_prediction("p1", _served(1000))
    assert join.add_label(_label("p1")) != "duplicate"
    assert join.add_label(_label("p1")) == "duplicate"
    assert join.add_prediction("p1", _served(1000)) is None  # re-read after a restart: not held again
    assert join.sizes["predictions"] == 0


def test_expiry_forgets_old_predictions_by_event_time_and_gives_up_waiting_labels() -> None:
    join = LabelJoin(60_000, 30.0, 100)
    join.add_prediction("old", _served(1_000, offset=1))
    join.add_prediction("new", _served(100_000, offset=2))
    join.add_label(_label("lonely", 100_000, arrived=10.0))
    gone, expired = join.expire(now_s=20.0)
    assert gone == 1 and expired == []
    gone, expired = join.expire(now_s=41.0)
    assert gone == 0 and [e.prediction_id for e in expired] == ["lonely"]
    assert join.sizes == {"predictions": 1, "labels": 0}


def test_low_water_is_the_oldest_waiting_prediction_per_partition() -> None:
    join = LabelJoin(60_000, 30.0, 100)
    join.add_prediction("a", _served(1, partition=0, offset=5))
    join.add_prediction("b", _served(2, partition=0, offset=9))
    join.add_prediction("c", _served(3, partition=1, offset=4))
    join.add_label(_label("a"))
    join.add_label(_label("c"))
    assert join.low_water({0: 12, 1: 8, 2: 3}) == {0: 9, 1: 8, 2: 3}


def test_the_oldest_prediction_is_evicted_beyond_the_cap() -> None:
    join = LabelJoin(60_000, 30.0, 2)
    for k in range(3):
        join.add_prediction(f"p{k}", _served(k, offset=k))
    assert join.evicted == 1 and join.sizes["predictions"] == 2
    assert join.add_label(_label("p0")) is None  # evicted: the label waits, then goes to the DLQ


def test_restored_labels_wait_again_from_now() -> None:
    join = LabelJoin(60_000, 30.0, 100)
    join.restore_labels([_label("p9", arrived=-1000.0)], now_s=50.0)
    assert join.expire(now_s=60.0)[1] == []
    assert join.add_prediction("p9", _served(5)) is not None
