"""The Bytewax feature flow end to end on a real broker, registry and Redis, checked against the oracle."""

from __future__ import annotations

import glob
import signal

import httpx
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import frame
from schemas.registry import RegistryClient
from schemas.serde import TopicSerde
from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM
from tests.flowkit import (
    flow_env,
    make_events,
    provision,
    publish,
    read_back,
    read_dead_letters,
    start_flow,
    wait_for_redis,
)
from tests.oracle import accepted_in_partition_order, expected_features
from tests.servers import free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _event_log_rows(tmp_path) -> list[dict]:
    files = glob.glob(str(tmp_path / "home" / "data" / "events" / "topic=*" / "date=*" / "hour=*" / "*.parquet"))
    if not files:
        return []
    return pq.ParquetDataset(files).read(columns=["_topic", "_partition", "_offset", "_late"]).to_pylist()
LATENESS_MS = 300_000
GARBAGE = [(CLICKSTREAM, b"\x07not avro at all"), (CLICKSTREAM, frame(999_999, b"\x02x")),
           (CLICKSTREAM, b"\x00\x00"), (CDC_USERS, frame(1, b""))]


def test_flow_writes_oracle_features_parquet_once_and_dead_letters(fresh_kafka, registry_url, redis_db_url, tmp_path):
    provision(fresh_kafka)
    events = make_events(seed=7, users=40, items=15, events=4000)
    valid = TopicSerde(CLICKSTREAM, RegistryClient(registry_url)).serialize(events[-1][1])
    garbage = [*GARBAGE, (CLICKSTREAM, valid[:-4])]  # right schema id, truncated Avro body
    publish(fresh_kafka, registry_url, events, garbage)
    records = read_back(fresh_kafka, registry_url, [CLICKSTREAM, CDC_USERS, CDC_ITEMS], len(events) + len(garbage))
    assert len(records) == len(events) + len(garbage)
    accepted, late = accepted_in_partition_order(
        [(p, o, t, r) for p, o, t, r, _ in records if r is not None], LATENESS_MS)
    assert late, "the generator should have produced late events"
    want = expected_features(accepted)

    metrics_port = free_port()
    env = flow_env(tmp_path / "home", fresh_kafka, registry_url, redis_db_url,
                   STREAMML_FEATURES_METRICS_PORT=str(metrics_port))
    flow = start_flow(env, tmp_path / "flow.log")
    try:
        got = wait_for_redis(redis_db_url, want, timeout_s=90)
        assert got.keys() == want.keys()
        mismatches = {k: (got[k], want[k]) for k in want if got[k] != pytest.approx(want[k])}
        assert not mismatches, list(mismatches.items())[:3]

        letters = read_dead_letters(fresh_kafka, [CLICKSTREAM.dlq, CDC_USERS.dlq], len(late) + len(garbage))
        reasons = sorted(d["streamml.error.reason"] for d in letters)
        assert reasons.count("late") == len(late)
        assert sorted(r for r in reasons if r != "late") == [
            "bad_magic", "invalid_avro", "truncated", "truncated", "unknown_schema"]
        assert {d["value"] for d in letters if d["streamml.error.reason"] != "late"} == {g for _, g in garbage}

        # (the text parser reports counter samples without their `_total` suffix)
        scraped = {(s.name.removesuffix("_total"), tuple(sorted(s.labels.items()))): s.value
                   for m in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
                   for s in m.samples}
        clicks = sum(1 for _, _, t, _, _ in records if t == CLICKSTREAM.name)
        assert scraped[("streamml_features_events", (("topic", CLICKSTREAM.name),))] == clicks
        assert scraped[("streamml_features_late_events", (("topic", CLICKSTREAM.name),))] == len(late)
        assert scraped[("streamml_features_dead_letters",
                        (("reason", "bad_magic"), ("topic", CLICKSTREAM.name)))] == 1
        assert scraped[("streamml_features_freshness_seconds_count", ())] > 0
        assert scraped[("streamml_features_redis_write_seconds_count", ())] > 0
        positions = sum(v for (name, labels), v in scraped.items()
                        if name == "streamml_features_position_offset" and ("topic", CLICKSTREAM.name) in labels)
        assert positions == clicks

        # The Parquet log is flushed at each epoch (snapshot): wait for it before stopping the flow.
        decoded = {(t, p, o) for p, o, t, r, _ in records if r is not None}
        wait_for(lambda: len(_event_log_rows(tmp_path)) >= len(decoded), 30, "event log")
        wait_for(lambda: len(glob.glob(str(tmp_path / "home" / "data" / "features" / "entity=*"))) == 2, 30,
                 "feature log")
        # An epoch ends: each entity's shards are snapshotted, timed and their bytes counted (the event log's
        # flush at the same epoch may come first: it does not wait for the shards)
        def snapshotted() -> bool:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            snapshots = {(s.name, s.labels["entity"]): s.value for m in text_string_to_metric_families(text)
                         for s in m.samples if s.name.startswith("streamml_features_snapshot_")}
            return all(snapshots.get((f"streamml_features_snapshot_{what}", entity), 0) > 0
                       for entity in ("user", "item") for what in ("seconds_count", "bytes_total"))

        wait_for(snapshotted, 30, "snapshots of both entities")
    finally:
        flow.send_signal(signal.SIGTERM)
        flow.wait(30)

    rows = _event_log_rows(tmp_path)
    positions = [(r["_topic"], r["_partition"], r["_offset"]) for r in rows]
    assert len(positions) == len(set(positions)), "a row was written twice"
    assert set(positions) == decoded
    assert sum(r["_late"] for r in rows) == len(late)
    # The feature log: closed windows, one row per entity and window, event time inside the window.
    logged = glob.glob(str(tmp_path / "home" / "data" / "features" / "entity=*" / "date=*" / "hour=*" / "*.parquet"))
    assert logged
    table = pq.ParquetDataset(logged).read(columns=["entity", "entity_id", "feature_ts", "window_start", "window_end"])
    log_rows = table.to_pylist()
    keys = [(r["entity"], r["entity_id"], r["window_end"]) for r in log_rows]
    assert len(keys) == len(set(keys))
    assert all(r["window_start"] <= r["feature_ts"] < r["window_end"] for r in log_rows)
    assert {r["entity"] for r in log_rows} == {"user", "item"}


def test_one_event_stamped_an_hour_ahead_does_not_make_the_rest_late(fresh_kafka, registry_url, redis_db_url,
                                                                      tmp_path):
    import time

    provision(fresh_kafka, partitions=1)
    now = int(time.time() * 1000)

    def click(n: int, ts: int) -> tuple:
        return (CLICKSTREAM, {"event_id": f"e{n}", "user_id": f"u{n % 5}", "session_id": "s", "event_type": "click",
                              "item_id": f"i{n % 3}", "price": None, "ts": ts, "page": "/", "referrer": None,
                              "device": "mobile", "country": "DE", "props": {}})

    # a time-zone bug stamps one event 50 min ahead (validation accepts up to 1 h); the rest are honest
    events = [click(n, now - 60_000 + n * 100) for n in range(50)] + [click(50, now + 50 * 60_000)]
    events += [click(n, now - 30_000 + n * 100) for n in range(51, 100)]
    publish(fresh_kafka, registry_url, events)
    want = expected_features([(spec.name, record) for spec, record in events])  # nothing late
    flow = start_flow(flow_env(tmp_path / "home", fresh_kafka, registry_url, redis_db_url), tmp_path / "flow.log")
    try:
        got = wait_for_redis(redis_db_url, want, 90)
        assert {k: got.get(k) for k in want if got.get(k) != pytest.approx(want[k])} == {}
        assert read_dead_letters(fresh_kafka, [CLICKSTREAM.dlq], 1, timeout_s=3) == []
    finally:
        flow.send_signal(signal.SIGTERM)
        flow.wait(30)
