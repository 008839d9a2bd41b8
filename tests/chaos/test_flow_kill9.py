"""kill -9 the feature flow at random points while events arrive; after restarts nothing is lost or doubled."""

from __future__ import annotations

import glob
import random
import signal
import threading
import time

import pyarrow.parquet as pq
import pytest

from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM
from tests.flowkit import flow_env, make_events, provision, publish, read_back, start_flow, wait_for_redis
from tests.oracle import accepted_in_partition_order, expected_features

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_sigkill_at_random_points_converges_to_the_oracle(fresh_kafka, registry_url, redis_db_url, tmp_path):
    provision(fresh_kafka)
    events = make_events(seed=11, users=200, items=40, events=30_000)
    chunks = [events[i:i + 1500] for i in range(0, len(events), 1500)]
    env = flow_env(tmp_path / "home", fresh_kafka, registry_url, redis_db_url)

    def produce() -> None:
        for chunk in chunks:
            publish(fresh_kafka, registry_url, chunk)
            time.sleep(0.25)

    producer = threading.Thread(target=produce)
    producer.start()
    rnd = random.Random(3)
    kills = 0
    flow = start_flow(env, tmp_path / "flow.log")
    try:
        for _ in range(5):
            time.sleep(rnd.uniform(2.0, 5.0))
            flow.send_signal(signal.SIGKILL)
            flow.wait(10)
            kills += 1
            flow = start_flow(env, tmp_path / "flow.log")
        producer.join()
        records = read_back(fresh_kafka, registry_url, [CLICKSTREAM, CDC_USERS, CDC_ITEMS], len(events))
        assert len(records) == len(events)
        accepted, late = accepted_in_partition_order([(p, o, t, r) for p, o, t, r, _ in records], 300_000)
        want = expected_features(accepted)
        got = wait_for_redis(redis_db_url, want, timeout_s=120)
        assert got.keys() == want.keys()
        mismatches = {k: (got[k], want[k]) for k in want if got[k] != pytest.approx(want[k])}
        # Only the fields that differ, whole (pytest would truncate the dicts): what a failure needs to be read.
        assert not mismatches, [(k, {f: (g.get(f), w.get(f)) for f in sorted(set(g) | set(w)) if g.get(f) != w.get(f)},
                                 g.get("_ts")) for k, (g, w) in list(mismatches.items())[:5]]
    finally:
        flow.send_signal(signal.SIGTERM)
        flow.wait(30)
    assert kills == 5
    # Each shard's state went to segment files, and replaced or orphaned ones were deleted: 6-8 files a shard
    # were left here, where keeping them all would leave one per epoch (1 s) of every run.
    shards = list((tmp_path / "home" / "recovery" / "features" / "state").iterdir())
    assert shards and all(0 < len(list(shard.glob("*.seg"))) <= 16 for shard in shards)

    files = glob.glob(str(tmp_path / "home" / "data" / "events" / "topic=*" / "date=*" / "hour=*" / "*.parquet"))
    rows = pq.ParquetDataset(files).read(columns=["_topic", "_partition", "_offset"]).to_pylist()
    positions = [(r["_topic"], r["_partition"], r["_offset"]) for r in rows]
    assert len(positions) == len(set(positions)), "a row was written twice"
    assert set(positions) == {(t, p, o) for p, o, t, _, _ in records}
