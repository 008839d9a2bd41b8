"""Soak benchmark: a steady event stream into the feature flow and steady predict traffic into
inference, together, for minutes; does throughput hold, does lag stay bounded, does memory grow?

Starts its own Tansu, Redis and registry, then the flow, inference (a trained model) and the ops
service (which measures the flow's consumer lag). Events are produced at `--event-rate` by a
rate-limited producer; predictions are sent open-loop at `--request-rate` by a separate driver
process (bench/serving.py's). Every `--sample-s` it records each process's RSS, the flow's
events-in counter and the lag ops reports. Prints one JSON object: the rates asked for (the
ceiling the achieved rates are compared with), the rates held, p50/p99, lag max and at the end,
and RSS at start and end with a least-squares slope (MB/min) per process.
Defaults are the issue's: 10k events/s and 500 req/s for 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from confluent_kafka import Producer  # noqa: E402
from feature_flow import event, flow_env, start_servers  # noqa: E402
from serving import drive, seed, start_inference, train_and_activate  # noqa: E402

from schemas.registry import RegistryClient  # noqa: E402
from schemas.serde import TopicSerde  # noqa: E402
from schemas.topics import CLICKSTREAM  # noqa: E402
from tests.servers import free_port, wait_for  # noqa: E402


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def counter(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    if len(samples) < 3:
        return None
    t, v = np.array(samples).T
    return round(float(np.polyfit(t / 60.0, v, 1)[0]), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--event-rate", type=float, default=10_000)
    parser.add_argument("--request-rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--sample-s", type=float, default=5.0)
    args = parser.parse_args()

    rnd = random.Random(5)
    work = Path(tempfile.mkdtemp(prefix="streamml-bench-soak-"))
    servers = start_servers(work)
    procs: dict[str, subprocess.Popen] = {}
    result: dict = {"benchmark": "soak", "cpus": os.cpu_count(), "duration_s": args.duration,
                    "ceiling": {"event_rate": args.event_rate, "request_rate": args.request_rate},
                    "users": args.users, "items": args.items}
    try:
        bootstrap, registry_url, redis_url = servers.bootstrap, servers.registry_url, servers.redis_url()
        seed(redis_url, args.users, args.items, rnd)
        version = train_and_activate(redis_url, "soak", args.users, args.items, rnd)
        common = {"STREAMML_HOME": str(work / "home"), "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                  "STREAMML_SCHEMA_REGISTRY_URL": registry_url, "STREAMML_REDIS_URL": redis_url,
                  "STREAMML_LOG_LEVEL": "WARNING"}
        flow_metrics, ops_port = free_port(), free_port()
        procs["features"] = subprocess.Popen(
            [sys.executable, "-m", "streams.flows.run"], cwd=ROOT,
            env=flow_env(work / "home", bootstrap, registry_url, redis_url, flow_metrics),
            stdout=open(work / "flow.log", "ab"), stderr=subprocess.STDOUT)
        procs["ops"] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "ops"], cwd=ROOT,
            env={**os.environ, **common, "STREAMML_OPS_PORT": str(ops_port), "STREAMML_OPS_INTERVAL_S": "2",
                 "STREAMML_OPS_TARGETS": f"features=http://127.0.0.1:{flow_metrics}/metrics"},
            stdout=open(work / "ops.log", "ab"), stderr=subprocess.STDOUT)
        procs["inference"], base = start_inference(work, servers, "soak", "soak-key", version)
        ops, flow_url = f"http://127.0.0.1:{ops_port}", f"http://127.0.0.1:{flow_metrics}/metrics"
        wait_for(lambda: httpx.get(f"{ops}/healthz").status_code == 200, 30, "ops")
        wait_for(lambda: httpx.get(flow_url).status_code == 200, 60, "flow")

        bodies = work / "singles.jsonl"
        bodies.write_text("\n".join(json.dumps({"user_id": f"u{rnd.randrange(args.users)}",
                                                "item_id": f"i{rnd.randrange(args.items)}"}) for _ in range(20_000)))
        serde = TopicSerde(CLICKSTREAM, RegistryClient(registry_url))
        produced = {"events": 0, "seconds": 0.0}

        def produce_steadily() -> None:
            """One idempotent producer, events generated as they are due (the bench holds no backlog)."""
            producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True,
                                 "queue.buffering.max.messages": 1_000_000})
            n, started = 0, time.monotonic()
            while (elapsed := time.monotonic() - started) < args.duration:
                due = int(elapsed * args.event_rate)
                now = int(time.time() * 1000)
                for _ in range(due - n):
                    record = event(rnd, n, args.users, args.items, now)
                    while True:
                        try:
                            producer.produce(CLICKSTREAM.name, key=record["user_id"].encode(),
                                             value=serde.serialize(record))
                            break
                        except BufferError:
                            producer.poll(0.01)
                    n += 1
                producer.poll(0)
                time.sleep(0.005)
            producer.flush(60)
            produced.update(events=n, seconds=time.monotonic() - started)

        samples: list[dict] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.wait(args.sample_s):
                row = {"t": time.monotonic() - t0, "rss": {k: rss_mb(p.pid) for k, p in procs.items()}}
                try:
                    row["events_in"] = counter(flow_url, "streamml_features_events_total")
                    groups = httpx.get(f"{ops}/api/summary", timeout=5).json()["groups"]
                    flow = next((g for g in groups if g["group"] == "streamml-features"), None)
                    row["lag_messages"], row["lag_s"] = (flow["messages"], flow["seconds"]) if flow else (None, None)
                except httpx.HTTPError:
                    pass
                samples.append(row)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        producer = threading.Thread(target=produce_steadily)
        producer.start()
        serving = drive(f"{base}/v1/predict", bodies, args.request_rate, args.duration, "soak-key")
        producer.join()
        stop.set()
        sampler.join()

        steady = [s for s in samples if "events_in" in s]
        first, last = steady[0], steady[-1]
        flow_eps = (last["events_in"] - first["events_in"]) / max(last["t"] - first["t"], 1e-9)
        lags = [s["lag_messages"] for s in steady if s.get("lag_messages") is not None]
        lag_s = [s["lag_s"] for s in steady if s.get("lag_s") is not None]
        result.update({
            "produced_events": produced["events"],
            "produced_eps": round(produced["events"] / max(produced["seconds"], 1e-9)),
            "flow_eps": round(flow_eps),
            "events_held": round(flow_eps / args.event_rate, 3),
            "lag_max_messages": max(lags) if lags else None, "lag_end_messages": lags[-1] if lags else None,
            "lag_max_s": max(lag_s) if lag_s else None, "lag_end_s": lag_s[-1] if lag_s else None,
            "requests": serving["requests"], "requests_achieved_rate": serving["achieved_rate"],
            "requests_held": round(serving["achieved_rate"] / args.request_rate, 3),
            "predict_errors": serving["errors"], "predict_error_kinds": serving["error_kinds"],
            "predict_p50_ms": serving["p50_ms"],
            "predict_p99_ms": serving["p99_ms"], "predict_max_ms": serving["max_ms"],
            "rss_mb": {name: {"start": round(steady[0]["rss"][name] or 0, 1), "end": round(steady[-1]["rss"][name] or 0, 1),
                              "slope_mb_per_min": slope_mb_per_min([(s["t"], s["rss"][name]) for s in steady
                                                                    if s["rss"].get(name)])}
                       for name in procs},
            "samples": len(steady),
        })
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        servers.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
