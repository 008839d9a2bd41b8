"""Replay and training export against the live flow: same events, same values, key by key."""

from __future__ import annotations

import json
import time

import pyarrow.parquet as pq
import pytest
import redis

from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM, LABELS, PREDICTIONS
from streams.features.definitions import FEATURES, HOUR_MS, defaults
from streams.features.keys import ACTIVE_NAMESPACE_KEY, feature_key
from tests.flowkit import (
    cli,
    flow_env,
    make_events,
    provision,
    publish,
    read_back,
    redis_features,
    start_flow,
    wait_for_redis,
)
from tests.oracle import accepted_in_partition_order, expected_features

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LATENESS_MS = 300_000


def _oracle(bootstrap, registry_url, expected_records):
    records = read_back(bootstrap, registry_url, [CLICKSTREAM, CDC_USERS, CDC_ITEMS], expected_records)
    assert len(records) == expected_records
    accepted, late = accepted_in_partition_order([(p, o, t, r) for p, o, t, r, _ in records if r is not None],
                                                 LATENESS_MS)
    return expected_features(accepted), late


def _served(url: str, user: str, item: str) -> dict:
    """What serving does: both hashes, declared defaults where missing, qualified names."""
    got = redis_features(url)
    values = dict(defaults())
    for entity, eid in (("user", user), ("item", item)):
        for name, value in got.get((entity, eid), {}).items():
            if name != "_ts":
                values[f"{entity}.{name}"] = value
    return values


def test_replay_equals_live_and_export_equals_served(fresh_kafka, registry_url, redis_db_url, tmp_path):
    provision(fresh_kafka)
    phase1 = make_events(seed=21, users=30, items=12, events=2500)
    end1 = max(r.get("ts", r.get("ts_ms", 0)) for _, r in phase1)
    phase2 = make_events(seed=22, users=30, items=12, events=1500, t0=end1 + HOUR_MS)
    env = flow_env(tmp_path / "home", fresh_kafka, registry_url, redis_db_url)
    flow = start_flow(env, tmp_path / "flow.log")
    try:
        # phase 1, then "serve" some predictions from what the live flow wrote, as inference does
        publish(fresh_kafka, registry_url, phase1)
        want1, _ = _oracle(fresh_kafka, registry_url, len(phase1))
        got = wait_for_redis(redis_db_url, want1, timeout_s=120)
        assert got.keys() == want1.keys()
        predictions, labels = [], []
        for n, (user, item) in enumerate([(f"u{i}", f"i{i % 12}") for i in range(0, 30, 2)] + [("u-new", "i-new")]):
            served = _served(redis_db_url, user, item)
            pid = f"p{n}"
            ts = end1 + 1 + n * 60_000  # after every phase-1 event, before every phase-2 event
            predictions.append((PREDICTIONS, {"prediction_id": pid, "model": "m", "model_version": "1",
                                              "entities": {"user": user, "item": item},
                                              "features": {k: (v if isinstance(v, str) else float(v))
                                                           for k, v in served.items()},
                                              "score": 0.5, "ts": ts, "latency_ms": 1.0}))
            labels.append((LABELS, {"prediction_id": pid, "label": n % 2, "ts": ts + 5_000, "source": "test"}))
        publish(fresh_kafka, registry_url, predictions + labels)

        # phase 2: the live state moves on
        publish(fresh_kafka, registry_url, phase2)
        want, late = _oracle(fresh_kafka, registry_url, len(phase1) + len(phase2))
        assert late, "the generator should have produced late events"
        live = wait_for_redis(redis_db_url, want, timeout_s=120)
        assert live.keys() == want.keys()

        # replay from the Parquet log into a namespace: bit-identical to live, serving untouched
        report = json.loads(cli(env, "replay", "--source", "parquet", "--namespace", "blue", "--json").stdout)
        assert report["events"] > 0 and report["late_skipped"] == len(late)
        blue = redis_features(redis_db_url, "blue")
        assert blue.keys() == live.keys()
        diff = {k: (blue[k], live[k]) for k in live if blue[k] != live[k]}
        assert not diff, list(diff.items())[:3]
        client = redis.Redis.from_url(redis_db_url)
        assert client.get(ACTIVE_NAMESPACE_KEY) is None

        # replay from the topics: the same again
        cli(env, "replay", "--source", "topic", "--namespace", "green", "--json")
        green = redis_features(redis_db_url, "green")
        assert green == live

        # a dry run writes nothing; an existing namespace is refused with a way out
        dry = json.loads(cli(env, "replay", "--namespace", "dry", "--dry-run", "--json").stdout)
        assert dry["written"] == 0 and not redis_features(redis_db_url, "dry")
        again = cli(env, "replay", "--namespace", "blue", ok=False)
        assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
        rerun = json.loads(cli(env, "replay", "--namespace", "blue", "--overwrite", "--json").stdout)
        assert rerun["events"] == report["events"] and redis_features(redis_db_url, "blue") == live  # idempotent

        # promote: serving switches in one step and the live flow follows into the new namespace
        cli(env, "replay", "promote", "blue")
        assert client.get(ACTIVE_NAMESPACE_KEY) == b"blue"
        listed = json.loads(cli(env, "replay", "list", "--json").stdout)
        assert listed["blue"]["active"] == "yes" and listed["default"]["status"] == "retired"
        late_user = make_events(seed=23, users=1, items=1, events=3, t0=end1 + 3 * HOUR_MS, late_fraction=0)
        late_user = [(s, {**r, "user_id": "u-after"}) for s, r in late_user if s is CLICKSTREAM]
        publish(fresh_kafka, registry_url, late_user)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not client.exists(feature_key("user", "u-after", "blue")):
            time.sleep(0.3)
        assert client.exists(feature_key("user", "u-after", "blue"))
        assert not client.exists(feature_key("user", "u-after"))
        refused = cli(env, "replay", "drop", "blue", ok=False)
        assert refused.returncode == 2 and "serving" in refused.stderr
    finally:
        flow.terminate()
        flow.wait(30)

    # training export: features as of each prediction's time equal what was served then
    out = tmp_path / "training"
    manifest = json.loads(cli(env, "export-training", "--labels", "topic", "--out", str(out), "--json").stdout)
    assert manifest["rows"] == len(labels)
    skew = manifest["training_serving_skew"]
    assert skew["values_compared"] == len(labels) * len(FEATURES) and skew["mismatches"] == {}
    rows = {r["prediction_id"]: r for name in manifest["splits"] for r in pq.read_table(out / f"{name}.parquet").to_pylist()}
    for _, p in predictions:
        row = rows[p["prediction_id"]]
        for name, served in p["features"].items():
            assert row[name] == served, (p["prediction_id"], name)
        assert row["user.feature_ts"].timestamp() * 1000 <= p["ts"]
    assert sum(s["rows"] for s in manifest["splits"].values()) == len(labels)
    times = {name: [r["event_ts"] for r in pq.read_table(out / f"{name}.parquet").to_pylist()]
             for name in manifest["splits"]}
    assert max(times["train"]) < min(times["validation"]) <= max(times["validation"]) < min(times["test"])
