"""Benchmark: replay (rebuild of online features from the Parquet event log) against the live flow.

Starts its own Tansu, Redis and registry, pre-produces N clickstream events over U users, runs the
live flow until Redis reflects every event (`live_eps`), lets it flush the event log, stops it,
then replays the log into a namespace (`replay_eps`: read + compute + write, the namespace
hand-over wait reported apart) and checks every replayed key equals the live one. Prints one JSON
object; the goal is `ratio` = replay_eps / live_eps >= 10.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from feature_flow import (  # noqa: E402
    flow_env,
    preproduce,
    run_flow,
    start_servers,
    stop,
    wait_first_write,
    wait_reflected,
)

from streams.features.keys import feature_key  # noqa: E402
from streams.replay.rebuild import ReplayRequest, replay  # noqa: E402
from streams.settings import FeatureFlowSettings  # noqa: E402
from tests.servers import free_port  # noqa: E402


def parquet_rows(home: Path) -> int:
    import pyarrow.parquet as pq

    files = list((home / "data" / "events").rglob("p*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def compare(url: str, namespace: str, ids: dict[str, list[str]]) -> tuple[int, int]:
    """(keys compared, keys that differ) between the live keys and the namespace, every entity."""
    client = redis.Redis.from_url(url)
    compared = differ = 0
    for entity, names in ids.items():
        for i in range(0, len(names), 5000):
            chunk = names[i:i + 5000]
            pipe = client.pipeline(transaction=False)
            for eid in chunk:
                pipe.hgetall(feature_key(entity, eid))
                pipe.hgetall(feature_key(entity, eid, namespace))
            res = pipe.execute()
            for live, rebuilt in zip(res[::2], res[1::2]):
                compared += 1
                differ += live != rebuilt
    return compared, differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    servers = start_servers(work, args.partitions)
    bootstrap, registry_url = servers.bootstrap, servers.registry_url
    result: dict = {"benchmark": "replay", "events": args.events, "users": args.users, "items": args.items}
    procs: list[subprocess.Popen] = []
    try:
        _, _, records, last_ts, result["produce_s"] = preproduce(bootstrap, registry_url, args)

        home = work / "home"
        redis_url = servers.redis_url(1)
        env = flow_env(home, bootstrap, registry_url, redis_url, free_port(), STREAMML_FEATURES_EPOCH_S="2")
        procs = run_flow(env, 1, work / "flow.log")
        started = wait_first_write(redis_url, 120)
        ok = wait_reflected(redis_url, last_ts, 900)
        live_s = time.monotonic() - started
        result["live_s"] = round(live_s, 2)
        result["live_eps"] = round(args.events / live_s) if ok else 0
        deadline = time.monotonic() + 60
        while parquet_rows(home) < args.events and time.monotonic() < deadline:
            time.sleep(0.5)
        result["event_log_rows"] = parquet_rows(home)
        stop(procs)
        procs = []

        os.environ.update({k: v for k, v in env.items() if k.startswith("STREAMML_")})
        settings = FeatureFlowSettings()
        report = replay(settings, ReplayRequest(source="parquet", target="redis", namespace="bench"))
        result.update({"replay_s": round(report.seconds, 2), "replay_read_s": round(report.read_s, 2),
                       "replay_compute_s": round(report.compute_s, 2), "replay_write_s": round(report.write_s, 2),
                       "replay_handover_wait_s": report.handover_wait_s, "replay_events": report.events,
                       "replay_keys": report.written, "replay_files": report.files,
                       "replay_eps": round(report.events_per_s)})
        result["ratio"] = round(result["replay_eps"] / result["live_eps"], 2) if result["live_eps"] else 0
        result["ratio_goal"] = 10
        users = sorted(last_ts)
        items = sorted({r["item_id"] for r in records if r.get("item_id")})
        compared, differ = compare(redis_url, "bench", {"user": users, "item": items})
        result["parity_keys_compared"], result["parity_keys_differ"] = compared, differ

        dry = replay(settings, ReplayRequest(source="parquet", target="redis", namespace="bench-dry", dry_run=True))
        result["compute_only_eps"] = round(dry.events / (dry.read_s + dry.compute_s))
    finally:
        stop(procs)
        servers.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
