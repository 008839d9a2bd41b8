"""Benchmark: predictions per second through the drift job, and the delay from window close to metrics.

Starts its own Tansu, Redis and registry, pre-produces N PredictionLog records (with a stored
reference profile) over W event-time windows, measures the plain consume + Avro decode ceiling of
the same records in this run (decoded in bulk into columns as the job does, and one by one), then starts the drift job (`streamml run drift`, one process) and
times it until every record is counted, then how long after the last window's close (end +
lateness, advanced by the idle wall clock) its metrics appear. Goal: eps >= 50,000.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def record(rnd: random.Random, n: int, ts: int) -> dict:
    return {"prediction_id": f"p{n}", "model": "bench", "model_version": "v1", "entities": {"user": "u", "item": "i"},
            "features": {"user.views_1h": float(rnd.randint(0, 30)), "user.spend_24h": rnd.uniform(0, 300),
                         "item.ctr_1h": rnd.random(), "user.tier": rnd.choice(["gold", "silver", "basic"]),
                         "request.device": rnd.choice(["mobile", "desktop"]), "request.position": float(rnd.randint(0, 9))},
            "score": rnd.random(), "ts": ts, "latency_ms": 1.0}


def outcomes(metrics_url: str) -> dict[str, float]:
    text = httpx.get(metrics_url, timeout=5).text
    return {k: float(v) for k, v in re.findall(r'^streamml_drift_records_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}


def counted(metrics_url: str) -> float:
    return sum(outcomes(metrics_url).values())


def poll_until(check, timeout_s: float, what: str, every_s: float = 0.5) -> float:
    """perf_counter() when `check` first holds (within `every_s`); TimeoutError after `timeout_s`."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        try:
            if check():
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        time.sleep(every_s)
    raise TimeoutError(f"{what} not seen after {timeout_s}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=600_000)
    parser.add_argument("--windows", type=int, default=6)
    args = parser.parse_args()

    import redis
    from feature_flow import ceiling, produce, start_servers

    from schemas.registry import RegistryClient
    from schemas.serde import TopicSerde
    from schemas.topics import PREDICTIONS
    from streams.drift.reference import ProfileStore, profile_of
    from tests.servers import free_port, wait_for

    rnd = random.Random(3)
    work = Path(tempfile.mkdtemp(prefix="streamml-bench-drift-"))
    servers = start_servers(work)
    job = None
    result: dict = {"benchmark": "drift", "predictions": args.predictions, "windows": args.windows,
                    "cpus": os.cpu_count()}
    try:
        bootstrap, redis_url, registry_url = servers.bootstrap, servers.redis_url(), servers.registry_url
        window_ms = 60_000
        t0 = int(time.time() * 1000) - (args.windows + 2) * window_ms
        t0 -= t0 % window_ms
        ProfileStore(redis.Redis.from_url(redis_url)).save(
            profile_of("bench", "v1", [record(rnd, i, t0) for i in range(5000)], bins=10))
        serde = TopicSerde(PREDICTIONS, RegistryClient(registry_url))
        per_window = args.predictions // args.windows
        records = [record(rnd, n, t0 + (n // per_window) * window_ms + rnd.randrange(window_ms))
                   for n in range(args.predictions)]
        result["produce_s"] = round(produce(bootstrap, serde, records), 2)
        result["ceiling_eps"] = round(ceiling(bootstrap, serde, args.predictions, 4, bulk=True))
        result["ceiling_one_by_one_eps"] = round(ceiling(bootstrap, serde, args.predictions, 4))
        result["ceiling"] = ("ceiling_eps: confluent-kafka consume + the job's decode (each consumed list into Arrow "
                             "columns at once); ceiling_one_by_one_eps: the same consume + fastavro one record at a time")

        port = free_port()
        env = {**os.environ, "STREAMML_HOME": str(work), "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "STREAMML_SCHEMA_REGISTRY_URL": registry_url, "STREAMML_REDIS_URL": redis_url,
               "STREAMML_DRIFT_WINDOW_S": "60", "STREAMML_DRIFT_LATENESS_S": "5", "STREAMML_DRIFT_IDLE_CLOSE_S": "2",
               "STREAMML_DRIFT_METRICS_PORT": str(port), "STREAMML_LOG_LEVEL": "WARNING"}
        launched = time.perf_counter()
        job = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "drift"], cwd=ROOT, env=env,
                               stdout=open(work / "drift.log", "ab"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/metrics"
        # Poll /metrics twice a second: a tighter loop would steal the job's GIL (the scrape is ~1 ms of its time).
        first = poll_until(lambda: counted(url) > 0, 120, "the first counted prediction")
        done = poll_until(lambda: counted(url) >= args.predictions, 600, "every prediction counted")
        client = redis.Redis.from_url(redis_url)
        last_end = t0 + args.windows * window_ms
        wait_for(lambda: client.hget("drift:bench:score", "window_end") == str(last_end).encode(), 120,
                 "the last window's metrics")
        emitted = time.perf_counter()
        result["outcomes"] = outcomes(url)
        result.update({
            "startup_s": round(first - launched, 2), "job_s": round(done - first, 2),
            "eps": round(args.predictions / (done - first)),
            "close_to_metric_s": round(emitted - done, 2),
            "close_to_metric_note": "after the last record, the idle wall clock (2 s) closes the last window",
            "ratio": round(args.predictions / (done - first) / result["ceiling_eps"], 3),
            "goal": {"eps": ">= 50000"},
        })
    finally:
        if job is not None:
            job.terminate()
            job.wait(30)
        servers.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
