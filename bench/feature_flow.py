"""Benchmark: feature-flow throughput against the plain consume+decode ceiling, freshness, 2-process scaling.

Starts its own Tansu, Redis and registry on free ports, pre-produces N events over U users, then
measures (1) the ceiling: one confluent-kafka consumer + fastavro decode loop over all events,
(1b) the flow's stateless part: its own source, routing and event log in Bytewax, with no feature state and
no Redis (what a faster state engine could approach), (2) the flow: time from its first poll until Redis
reflects every event, (3) freshness at a fixed rate, from the producer's timestamp to the Redis write, (4) the
flow again with 2 processes, and (5) freshness at the same fixed rate into a new flow on a new, empty broker
(no inherited state, no held records).
Prints one JSON object.
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
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cpu import CpuWindow  # noqa: E402

from schemas.registry import RegistryClient  # noqa: E402
from schemas.serde import TopicSerde  # noqa: E402
from schemas.topics import CLICKSTREAM, all_topic_names  # noqa: E402
from streams.features.keys import feature_key  # noqa: E402
from streams.features.state import engine_from_env  # noqa: E402
from streams.kafka.admin import ensure_topics  # noqa: E402
from streams.settings import FeatureFlowSettings  # noqa: E402
from tests.servers import ServerProcess, free_port, start_redis, start_tansu, wait_for  # noqa: E402

KINDS = ["page_view"] * 50 + ["click"] * 25 + ["add_to_cart"] * 10 + ["purchase"] * 5 + ["search"] * 10


def event(rnd: random.Random, n: int, users: int, items: int, ts: int) -> dict:
    kind = rnd.choice(KINDS)
    user = f"u{rnd.randrange(users)}"
    item = None if kind == "search" else f"i{rnd.randrange(items)}"
    return {"event_id": f"e{n}", "user_id": user, "session_id": f"{user}-{ts // 1_800_000}", "event_type": kind,
            "item_id": item, "price": round(rnd.uniform(1, 200), 2) if item else None, "ts": ts, "page": "/p",
            "referrer": None, "device": "mobile", "country": "DE", "props": {}}


def produce(bootstrap: str, serde: TopicSerde, records: list[dict], rate: float | None = None) -> float:
    """Publish `records` to the serde's topic, keyed per the contract (at `rate`/s, or flat out); seconds taken.
    Records are encoded before the clock starts: encoding them on the way took this process to 20-22% of a
    core at 10k/s here, against 7-12% with them encoded, CPU the flow it measures would not get."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 1_000_000})
    topic = serde.spec.name
    encoded = [(serde.spec.key_of(r).encode(), serde.serialize(r)) for r in records]
    started = time.monotonic()
    for i, (key, value) in enumerate(encoded):
        if rate and i % 100 == 0:
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    return time.monotonic() - started


def ceiling(bootstrap: str, serde: TopicSerde, total: int, partitions: int, bulk: bool = False) -> float:
    """Plain consume + Avro decode of `total` records of the serde's topic: the rate any consumer tops out at.
    `bulk`: decode each consumed list at once into columns (`TopicSerde.deserialize_many`), else one by one.
    5,000 records per consume call: with 40,000 it fell to 76k ev/s from 127k (each call waits for its fill)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ceiling", "enable.auto.commit": False})
    consumer.assign([TopicPartition(serde.spec.name, p, 0) for p in range(partitions)])
    n = 0
    started = time.monotonic()
    while n < total:
        messages = [m for m in consumer.consume(5000, 1.0) if not m.error()]
        if bulk:
            decoded = serde.deserialize_many([m.value() for m in messages])
            assert not decoded.errors, decoded.errors
        else:
            for msg in messages:
                serde.deserialize(msg.value(), msg.partition(), msg.offset())
        n += len(messages)
    elapsed = time.monotonic() - started
    consumer.close()
    return total / elapsed


def stateless_child(bootstrap: str, registry_url: str, total: int, partitions: int, home: str) -> None:
    """Run the flow's source, routing and event log (its own parts) with no feature state and no Redis; print the
    rate from the first routed batch until `total` events went through, then exit (the source never ends)."""
    from datetime import timedelta

    import bytewax.operators as op
    from bytewax._bytewax import cli_main
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    from streams.features.shard import ENGINE, WINDOWED_TOPICS
    from streams.flows.features import route_batch, source_fields
    from streams.flows.source import EventSource, SourceConfig
    from streams.sinks.parquet import EventLogSink

    settings = FeatureFlowSettings()  # the flow's defaults: shards, lateness, batch size, epoch
    seen = {"n": 0, "first": 0.0}

    class Count(StatelessSinkPartition):
        def write_batch(self, items: list[int]) -> None:
            seen["first"] = seen["first"] or time.monotonic()
            seen["n"] += sum(items)
            if seen["n"] >= total:
                print(json.dumps({"eps": total / (time.monotonic() - seen["first"])}), flush=True)
                os._exit(0)

    class Counter(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Count:
            return Count()

    flow = Dataflow("stateless")
    source = SourceConfig({"bootstrap.servers": bootstrap}, registry_url, (CLICKSTREAM,), WINDOWED_TOPICS,
                          int(settings.features_lateness_s * 1000), group_id="bench-stateless",
                          batch_size=settings.features_batch_size, fields=source_fields((CLICKSTREAM,)),
                          columnar=ENGINE == "native")
    batches = op.input("kafka", flow, EventSource(source))
    keyed = op.map("by_partition", batches, lambda b: (f"{b.topic}:{b.partition}", b))
    parts = [f"{CLICKSTREAM.name}:{p}" for p in range(partitions)]
    op.output("event_log", keyed, EventLogSink(Path(home) / "events", {CLICKSTREAM.name: CLICKSTREAM}, parts))
    routed = op.flat_map("route", batches, lambda b: route_batch(b, settings.features_shards))
    counted = op.map("count", routed, lambda kv: len(kv[1]) if kv[1].entity == "user" else 0)
    op.output("counter", counted, Counter())
    cli_main(flow, epoch_interval=timedelta(seconds=settings.features_epoch_s))


def stateless(servers: Servers, total: int, partitions: int, home: Path) -> float:
    """Events/s of `stateless_child` over the pre-produced events, in a process of its own, as the flow runs."""
    done = subprocess.run([sys.executable, __file__, "--stateless-child", servers.bootstrap, servers.registry_url,
                           str(total), str(partitions), str(home)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the stateless flow printed no rate: {done.stderr[-2000:]}")
    return json.loads(lines[-1])["eps"]


@dataclass
class Servers:
    """The Tansu, Redis and registry of one benchmark run, on free ports, every contract topic created."""

    tansu: ServerProcess
    redis: ServerProcess
    registry: subprocess.Popen
    registry_url: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.tansu.port}"

    def redis_url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/{db}"

    def stop(self) -> None:
        self.registry.terminate()
        self.tansu.stop()
        self.redis.stop()


def start_servers(work: Path, partitions: int = 4) -> Servers:
    """Start all three under `work`, wait for the registry, create the topics with `partitions` each."""
    tansu, redis_srv = start_tansu(work), start_redis(work)
    reg_port = free_port()
    registry = subprocess.Popen([sys.executable, "-m", "services.registry"], cwd=ROOT,
                                env={**os.environ, "STREAMML_HOME": str(work / "reg"),
                                     "STREAMML_REGISTRY_PORT": str(reg_port)},
                                stdout=open(work / "registry.log", "ab"), stderr=subprocess.STDOUT)
    servers = Servers(tansu, redis_srv, registry, f"http://127.0.0.1:{reg_port}")
    wait_for(lambda: httpx.get(f"{servers.registry_url}/healthz").status_code == 200, 30, "registry")
    ensure_topics({"bootstrap.servers": servers.bootstrap}, all_topic_names(), partitions)
    return servers


def preproduce(bootstrap: str, registry_url: str, args: argparse.Namespace
               ) -> tuple[TopicSerde, random.Random, list[dict], dict[str, int], float]:
    """`args.events` clickstream events over the last hour produced as fast as possible.
    Returns (serde, the generator's random state, records, each user's last event time, produce seconds)."""
    serde = TopicSerde(CLICKSTREAM, RegistryClient(registry_url))
    rnd = random.Random(1)
    t0 = int(time.time() * 1000) - 3_600_000
    records = [event(rnd, n, args.users, args.items, t0 + n * 3_600_000 // args.events) for n in range(args.events)]
    last_ts = {r["user_id"]: r["ts"] for r in records}
    return serde, rnd, records, last_ts, round(produce(bootstrap, serde, records), 2)


def flow_env(home: Path, bootstrap: str, registry: str, redis_url: str, metrics_port: int, **extra) -> dict:
    return {**os.environ, "STREAMML_HOME": str(home), "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMML_SCHEMA_REGISTRY_URL": registry, "STREAMML_REDIS_URL": redis_url,
            "STREAMML_FEATURES_METRICS_PORT": str(metrics_port), "STREAMML_LOG_LEVEL": "WARNING", **extra}


def wait_first_write(redis_url: str, timeout_s: float) -> float:
    """Monotonic time at which the first feature hash appears (the flow is up and writing)."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.dbsize() > 0:
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError("the flow wrote nothing")


def wait_first_poll(metrics_urls: list[str], timeout_s: float) -> float:
    """Monotonic time at which a flow process first read events (its events counter left 0): where a flow's
    clock starts, as the ceiling's starts before its first poll. Timing from the first Redis write instead
    left out the processing of the first poll, which grows with the poll size (up to 1.8 s at 40k records)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for url in metrics_urls:
            try:
                if sample_sum(url, EVENTS_IN) > 0:
                    return time.monotonic()
            except httpx.HTTPError:  # its metrics server is not up yet
                pass
        time.sleep(0.01)
    raise TimeoutError("the flow read nothing")


def wait_reflected(redis_url: str, last_ts: dict[str, int], timeout_s: float, sample: int = 100,
                   every_s: float = 0.05) -> bool:
    """Wait until Redis reflects every user's last event. Polls a small random sample of the users
    still pending every `every_s`, then confirms all of them. The poller shares the flow's two cores: with
    500 users every 20 ms this process took 28-45% of a core during the flow phase here (plus Redis' time
    to answer), with 100 every 50 ms 11-16%."""
    client = redis.Redis.from_url(redis_url)
    pending = dict(last_ts)
    rnd = random.Random(0)
    deadline = time.monotonic() + timeout_s

    def check(users: list[str]) -> None:
        pipe = client.pipeline(transaction=False)
        for user in users:
            pipe.hget(feature_key("user", user), "_ts")
        for user, raw in zip(users, pipe.execute()):
            if raw is not None and int(raw) >= pending[user]:
                del pending[user]

    while pending and time.monotonic() < deadline:
        users = list(pending)
        check(rnd.sample(users, min(sample, len(users))) if len(users) > sample else users)
        if len(pending) and len(pending) <= len(users) - min(sample, len(users)):
            check(list(pending))  # the whole sample landed: confirm the rest in one sweep
        if pending:
            time.sleep(every_s)
    return not pending


def histogram(metrics_url: str, name: str, labels: str = "") -> dict[float, float]:
    """Cumulative bucket counts of one histogram series (`labels`: e.g. 'endpoint="batch",')."""
    text = httpx.get(metrics_url, timeout=5).text
    out = {}
    for m in re.finditer(rf'^{name}_bucket{{{re.escape(labels)}le="([^"]+)"}} (\S+)$', text, re.M):
        out[float("inf") if m[1] == "+Inf" else float(m[1])] = float(m[2])
    return out


def sample_sum(metrics_url: str, sample: str) -> float:
    """Sum over the series of one sample name (a counter's `_total`, a histogram's `_sum`)."""
    text = httpx.get(metrics_url, timeout=5).text
    return sum(float(m[1]) for m in re.finditer(rf"^{sample}(?:{{[^}}]*}})? (\S+)$", text, re.M))


EVENTS_IN = "streamml_features_events_total"  # records the flow read
SNAPSHOT_SUM = "streamml_features_snapshot_seconds_sum"  # the flow's time standing still for epoch snapshots
SNAPSHOT_BYTES = "streamml_features_snapshot_bytes_total"  # what those snapshots wrote (segments and manifests)


def snapshots(metrics_url: str) -> tuple[float, float]:
    """(seconds, MB) the flow has spent on and written in epoch snapshots so far."""
    return sample_sum(metrics_url, SNAPSHOT_SUM), sample_sum(metrics_url, SNAPSHOT_BYTES) / 1e6


def quantile(delta: dict[float, float], q: float) -> float:
    """Quantile from cumulative bucket counts, linear inside the bucket (Prometheus' histogram_quantile)."""
    bounds = sorted(delta)
    total = delta[bounds[-1]]
    if total <= 0:
        return float("nan")
    rank, prev_b, prev_c = q * total, 0.0, 0.0
    for b in bounds:
        if delta[b] >= rank:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * (rank - prev_c) / max(delta[b] - prev_c, 1e-9)
        prev_b, prev_c = b, delta[b]
    return bounds[-1]


def fixed_rate_times(rate: float, seconds: float) -> list[int]:
    """Event times (ms) of a stream at `rate`/s starting now, one per event."""
    now = int(time.time() * 1000)
    return [now + int(n * 1000 / rate) for n in range(int(rate * seconds))]


def freshness(bootstrap: str, serde: TopicSerde, redis_url: str, metrics_port: int, phase: list[dict], rate: float,
              label: str, watch: dict[str, int]) -> dict:
    """Produce `phase` at `rate` into a running flow and read its freshness histogram over the phase: the
    `fresh{label}_*` and `freshness{label}_*` figures (CPU of the `watch`ed processes included)."""
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    before = histogram(metrics_url, "streamml_features_freshness_seconds")
    paused, written = snapshots(metrics_url)
    with CpuWindow(**watch) as cpu:
        produced_s = produce(bootstrap, serde, phase, rate=rate)
    drained = wait_reflected(redis_url, {r["user_id"]: r["ts"] for r in phase}, 300)
    time.sleep(1)
    after = histogram(metrics_url, "streamml_features_freshness_seconds")
    delta = {b: after[b] - before.get(b, 0.0) for b in after}
    paused_after, written_after = snapshots(metrics_url)
    return {f"fresh{label}_cpu": cpu.shares(), f"fresh{label}_rate_eps": round(len(phase) / produced_s),
            f"freshness{label}_p50_ms": round(quantile(delta, 0.5) * 1000, 1),
            f"freshness{label}_p99_ms": round(quantile(delta, 0.99) * 1000, 1),
            f"fresh{label}_drained": drained,  # the next phase starts only once this one is in Redis
            f"fresh{label}_snapshot_s": round(paused_after - paused, 2),
            f"fresh{label}_snapshot_mb": round(written_after - written, 1)}


def watched(procs: list[subprocess.Popen], servers: Servers) -> dict[str, int]:
    """The processes whose CPU each phase reports: the (first) flow process, Tansu and Redis."""
    return {"flow": procs[0].pid, "tansu": servers.tansu.proc.pid, "redis": servers.redis.proc.pid}


def run_flow(env: dict, procs: int, log: Path) -> tuple[list[subprocess.Popen], list[str]]:
    """Start the flow as `procs` processes; them and their metrics URLs."""
    if procs == 1:
        argvs = [({}, [sys.executable, "-m", "streams.flows.run"])]
    else:
        ports = [free_port() for _ in range(procs)]
        addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
        argvs = [({"STREAMML_FEATURES_PROCESS_ID": str(i), "STREAMML_FEATURES_ADDRESSES": addresses,
                   "STREAMML_FEATURES_METRICS_PORT": str(free_port())},
                  [sys.executable, "-m", "streams.flows.run"]) for i in range(procs)]
    out, urls = [], []
    for extra, argv in argvs:
        out.append(subprocess.Popen(argv, env={**env, **extra}, stdout=open(log, "ab"), stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{({**env, **extra})['STREAMML_FEATURES_METRICS_PORT']}/metrics")
    return out, urls


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> None:
    if sys.argv[1:2] == ["--stateless-child"]:
        bootstrap, registry_url, total, partitions, home = sys.argv[2:7]
        stateless_child(bootstrap, registry_url, int(total), int(partitions), home)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--fresh-rate", type=float, default=10_000)
    parser.add_argument("--fresh-seconds", type=float, default=20)
    parser.add_argument("--light-rate", type=float, default=2_000, help="second freshness phase, below capacity")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-stateless", action="store_true", help="skip the flow's stateless part (1b)")
    parser.add_argument("--skip-new-broker", action="store_true", help="skip the fixed-rate phase into a new flow on a new broker")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-flow-"))
    servers = start_servers(work, args.partitions)
    bootstrap, registry_url = servers.bootstrap, servers.registry_url
    settings = FeatureFlowSettings()  # what the flows below run with (they inherit this environment)
    result: dict = {"benchmark": "feature_flow", "events": args.events, "users": args.users,
                    "partitions": args.partitions, "poll_records": settings.features_batch_size,
                    "shards": settings.features_shards, "engine": engine_from_env()}
    procs: list[subprocess.Popen] = []
    try:
        serde, rnd, records, last_ts, result["produce_s"] = preproduce(bootstrap, registry_url, args)

        result["ceiling_eps"] = round(ceiling(bootstrap, serde, args.events, args.partitions))
        if not args.skip_stateless:
            result["stateless_eps"] = round(stateless(servers, args.events, args.partitions, work / "stateless"))
            result["stateless_ratio"] = round(result["stateless_eps"] / result["ceiling_eps"], 3)

        metrics_port = free_port()
        env = flow_env(work / "home1", bootstrap, registry_url, servers.redis_url(1), metrics_port)
        launched = time.monotonic()
        procs, urls = run_flow(env, 1, work / "flow1.log")
        started = wait_first_poll(urls, 120)
        with CpuWindow(**watched(procs, servers)) as flow_cpu:
            ok = wait_reflected(env["STREAMML_REDIS_URL"], last_ts, 600)
        result["flow_cpu"] = flow_cpu.shares()
        result["flow_startup_s"] = round(started - launched, 2)
        result["flow_s"] = round(time.monotonic() - started, 2)
        result["flow_eps"] = round(args.events / result["flow_s"]) if ok else 0
        result["ratio"] = round(result["flow_eps"] / result["ceiling_eps"], 3)
        time.sleep(1)  # the last windows' files
        flow_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        result["log_window_merges"] = sample_sum(flow_metrics, "streamml_features_log_window_merges_total")
        paused, written = snapshots(flow_metrics)
        result["snapshot_s"], result["snapshot_mb"] = round(paused, 2), round(written, 1)

        # Freshness: fixed-rate streams into the running flow (the asked rate, then a light one).
        watch = watched(procs, servers)
        fresh: list[dict] = []
        for label, rate in (("", args.fresh_rate), ("_light", args.light_rate)):
            phase = [event(rnd, args.events + len(fresh) + n, args.users, args.items, ts)
                     for n, ts in enumerate(fixed_rate_times(rate, args.fresh_seconds))]
            fresh += phase
            result.update(freshness(bootstrap, serde, env["STREAMML_REDIS_URL"], metrics_port, phase, rate, label, watch))
        n_fresh = len(fresh)
        stop(procs)
        procs = []

        if not args.skip_scaling:
            for r in fresh:
                last_ts[r["user_id"]] = max(last_ts.get(r["user_id"], 0), r["ts"])
            total = args.events + n_fresh
            env2 = flow_env(work / "home2", bootstrap, registry_url, servers.redis_url(2), 0)
            procs, urls = run_flow(env2, 2, work / "flow2.log")
            started = wait_first_poll(urls, 120)
            ok = wait_reflected(env2["STREAMML_REDIS_URL"], last_ts, 600)
            elapsed = time.monotonic() - started
            result["flow_2proc_eps"] = round(total / elapsed) if ok else 0
            result["scaling_2proc"] = round(result["flow_2proc_eps"] / result["flow_eps"], 2) if result["flow_eps"] else 0
            stop(procs)
            procs = []
        if not args.skip_new_broker:
            # The same fixed rate into a new flow on a new, empty broker: what it costs without the state the
            # flow above carries from the pre-produced events (100k users; epoch snapshots grow with the
            # state) and without the record batches the broker holds (Tansu's fetches cost more with each).
            servers.stop()
            (work / "new-broker").mkdir()
            servers = start_servers(work / "new-broker", args.partitions)
            serde = TopicSerde(CLICKSTREAM, RegistryClient(servers.registry_url))
            metrics_port = free_port()
            env = flow_env(work / "home3", servers.bootstrap, servers.registry_url, servers.redis_url(3), metrics_port)
            procs, _ = run_flow(env, 1, work / "flow3.log")
            produce(servers.bootstrap, serde, [event(rnd, -n - 1, args.users, args.items, int(time.time() * 1000))
                                               for n in range(100)])
            wait_first_write(env["STREAMML_REDIS_URL"], 120)
            time.sleep(3)  # past the flow's start-up
            phase = [event(rnd, args.events + n_fresh + n, args.users, args.items, ts)
                     for n, ts in enumerate(fixed_rate_times(args.fresh_rate, args.fresh_seconds))]
            result.update(freshness(servers.bootstrap, serde, env["STREAMML_REDIS_URL"], metrics_port, phase,
                                    args.fresh_rate, "_new_broker", watched(procs, servers)))
            stop(procs)
            procs = []
        result["goal"] = {"ratio": ">= 0.5", "freshness_p99_ms": "<= 250"}
    finally:
        stop(procs)
        servers.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
