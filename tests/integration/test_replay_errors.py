"""Replay and export refuse bad input with errors that say what to do, and never touch serving."""

from __future__ import annotations

import os

import pytest
import redis

from schemas.topics import CLICKSTREAM
from streams.features.keys import ACTIVE_NAMESPACE_KEY, feature_key
from streams.flows.source import SourceBatch
from streams.sinks.parquet import EventLogWriter
from tests.flowkit import cli, redis_features

pytestmark = pytest.mark.integration
HOUR = 3_600_000
T0 = 1_763_800_000_000 // HOUR * HOUR


def _env(home, redis_url) -> dict[str, str]:
    return {**os.environ, "STREAMML_HOME": str(home), "STREAMML_REDIS_URL": redis_url,
            "STREAMML_FEATURES_EPOCH_S": "0.1"}


def _log(home, flushes: int = 3) -> None:
    writer = EventLogWriter(home / "data" / "events", CLICKSTREAM, 0, -1)
    for f in range(flushes):
        events = [(o, {"event_id": f"e{o}", "user_id": f"u{o % 5}", "session_id": "s", "event_type": "click",
                       "item_id": "i1", "price": None, "ts": T0 + o * 1000, "page": "/", "referrer": None,
                       "device": "mobile", "country": "DE", "props": {}}) for o in range(f * 10, f * 10 + 10)]
        writer.add(SourceBatch(CLICKSTREAM.name, 0, events=events, ingest_ms=T0))
        writer.flush()


def test_missing_log_empty_range_and_existing_namespace(tmp_path, redis_db_url):
    env = _env(tmp_path / "home", redis_db_url)
    missing = cli(env, "replay", "--namespace", "a", ok=False)
    assert missing.returncode == 2 and "no event log" in missing.stderr and "--source topic" in missing.stderr

    _log(tmp_path / "home")
    empty = cli(env, "replay", "--namespace", "b", "--since", "2030-01-01T00:00Z", ok=False)
    assert empty.returncode == 2 and "no events between" in empty.stderr and "the log covers" in empty.stderr

    cli(env, "replay", "--namespace", "c")
    assert len(redis_features(redis_db_url, "c")) == 5 + 1  # five users, one item
    exists = cli(env, "replay", "--namespace", "c", ok=False)
    assert exists.returncode == 2 and "already exists" in exists.stderr
    bad = cli(env, "replay", "--namespace", "Bad Name!", ok=False)
    assert bad.returncode == 2 and "not valid" in bad.stderr
    when = cli(env, "replay", "--since", "yesterday", ok=False)
    assert when.returncode == 2 and "is not a time" in when.stderr


def test_a_corrupt_file_fails_the_replay_and_leaves_serving_untouched(tmp_path, redis_db_url):
    env = _env(tmp_path / "home", redis_db_url)
    _log(tmp_path / "home")
    client = redis.Redis.from_url(redis_db_url)
    client.hset(feature_key("user", "u1"), mapping={"clicks_5m": 99, "_ts": 1})
    victim = sorted((tmp_path / "home" / "data" / "events").rglob("*.parquet"))[1]
    victim.write_bytes(b"PAR1 this is not parquet")

    failed = cli(env, "replay", "--namespace", "broken", ok=False)
    assert failed.returncode == 2 and victim.name in failed.stderr and "Move it aside" in failed.stderr
    assert client.hget("streamml:features:namespace:broken", "status") == b"failed"
    refused = cli(env, "replay", "promote", "broken", ok=False)
    assert refused.returncode == 2 and "not complete" in refused.stderr
    assert client.get(ACTIVE_NAMESPACE_KEY) is None
    assert client.hget(feature_key("user", "u1"), "clicks_5m") == b"99"  # serving keys untouched

    victim.rename(victim.with_suffix(".bad"))  # what the message says to do
    cli(env, "replay", "--namespace", "broken", "--overwrite")
    cli(env, "replay", "promote", "broken")
    assert client.get(ACTIVE_NAMESPACE_KEY) == b"broken"


def test_export_refuses_labels_without_predictions_and_bad_paths(tmp_path, redis_db_url):
    import pyarrow as pa
    import pyarrow.parquet as pq

    env = _env(tmp_path / "home", redis_db_url)
    _log(tmp_path / "home")
    nothing = cli(env, "export-training", "--labels", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "o"),
                  ok=False)
    assert nothing.returncode == 2 and "does not exist" in nothing.stderr
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"prediction_id": ["x"], "label": [1], "ts": [T0]}), labels)
    preds = tmp_path / "predictions.parquet"
    pq.write_table(pa.table({"prediction_id": ["y"], "entities": pa.array([[("user", "u1")]], pa.map_(pa.string(), pa.string())),
                             "ts": [T0]}), preds)
    unmatched = cli(env, "export-training", "--labels", str(labels), "--predictions", str(preds),
                    "--out", str(tmp_path / "o"), ok=False)
    assert unmatched.returncode == 2 and "matches a logged prediction" in unmatched.stderr

    # labels that carry their own ids and event time need no prediction log
    own = tmp_path / "own.parquet"
    pq.write_table(pa.table({"label": [1, 0, 1, 0], "event_ts": [T0 + 5_000, T0 + 15_000, T0 + 25_000, T0 + 29_000],
                             "user_id": ["u1", "u2", "u1", "zz"], "item_id": ["i1", "i1", "i1", None]}), own)
    out = tmp_path / "own-out"
    cli(env, "export-training", "--labels", str(own), "--out", str(out), "--fractions", "0.5,0.25,0.25")
    rows = sorted((r for s in ("train", "validation", "test") if (out / f"{s}.parquet").exists()
                   for r in pq.read_table(out / f"{s}.parquet").to_pylist()), key=lambda r: r["event_ts"])
    # u1 clicked at T0+1s, +6s, +11s, ... (offsets 1, 6, 11, ... of the log): as of +5 s only one click
    assert [r["user.clicks_5m"] for r in rows] == [1, 3, 5, 0]
    assert rows[3]["user.last_event_ts"] == 0 and rows[3]["item.views_1h"] == 0  # unknown entity: defaults
