"""The broker hangs (SIGSTOP for 10 s, then SIGCONT) under load: producers and the inference service
keep running, no prediction log record is lost, the flow catches up and its lag returns to 0."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer

from schemas.registry import RegistryClient
from schemas.serde import TopicSerde
from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM, PREDICTIONS
from streams.kafka.lag import LagProbe
from tests.flowkit import flow_env, make_events, provision, read_back, start_flow, wait_for_redis
from tests.oracle import accepted_in_partition_order, expected_features
from tests.servers import wait_for
from tests.servingkit import Service, serving_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HANG_S = 10.0


def test_broker_hang_under_load_loses_nothing(hangable_broker, registry_url, redis_db_url, tmp_path):
    bootstrap = f"127.0.0.1:{hangable_broker.port}"
    provision(bootstrap)
    events = make_events(seed=31, users=100, items=30, events=9_000)
    chunks = [events[i:i + 150] for i in range(0, len(events), 150)]  # 150 every 0.25 s: 600 events/s, ~15 s
    flow = start_flow(flow_env(tmp_path / "flow-home", bootstrap, registry_url, redis_db_url), tmp_path / "flow.log")
    service = Service(serving_env(tmp_path / "serve-home", bootstrap, registry_url, redis_db_url, "hang"),
                      tmp_path).start()
    gaps: list[float] = []
    answers: list[tuple[int, float, str | None]] = []
    stop_predicting = threading.Event()

    def produce() -> None:
        registry = RegistryClient(registry_url)
        serdes = {s.name: TopicSerde(s, registry) for s in (CLICKSTREAM, CDC_USERS, CDC_ITEMS)}
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
        last = time.monotonic()
        for chunk in chunks:
            for spec, record in chunk:
                producer.produce(spec.name, key=spec.key_of(record).encode(), value=serdes[spec.name].serialize(record))
            producer.poll(0)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            time.sleep(0.25)
        assert producer.flush(60) == 0  # everything produced during the hang is delivered after it

    def predict() -> None:
        n = 0
        while not stop_predicting.is_set():
            started = time.perf_counter()
            resp = service.client.post("/v1/predict", json={"user_id": f"u{n % 100}", "item_id": f"i{n % 30}"})
            answers.append((resp.status_code, time.perf_counter() - started,
                            resp.json().get("prediction_id") if resp.status_code == 200 else None))
            n += 1
            time.sleep(0.02)

    producer_thread, predict_thread = threading.Thread(target=produce), threading.Thread(target=predict)
    try:
        producer_thread.start()
        predict_thread.start()
        time.sleep(3.0)
        hangable_broker.pause()
        time.sleep(HANG_S)
        hangable_broker.resume()
        producer_thread.join(90)
        stop_predicting.set()
        predict_thread.join(30)
        assert not producer_thread.is_alive()

        # Producers and serving kept going through the hang.
        assert max(gaps) < 1.0, f"the producer loop stalled for {max(gaps):.2f} s"
        statuses = {status for status, _, _ in answers}
        assert statuses == {200}, statuses
        assert max(latency for _, latency, _ in answers) < 1.0
        served = {pid for _, _, pid in answers}

        # Every prediction served is in the log exactly once.
        logged = read_back(bootstrap, registry_url, [PREDICTIONS], len(served), timeout_s=90)
        ids = [record["prediction_id"] for _, _, _, record, _ in logged]
        assert len(ids) == len(set(ids)) and set(ids) == served, (len(ids), len(served))

        # The flow catches up: Redis equals the oracle and the flow's lag returns to 0.
        records = read_back(bootstrap, registry_url, [CLICKSTREAM, CDC_USERS, CDC_ITEMS], len(events))
        accepted, _ = accepted_in_partition_order([(p, o, t, r) for p, o, t, r, _ in records], 300_000)
        want = expected_features(accepted)
        got = wait_for_redis(redis_db_url, want, timeout_s=120)
        mismatches = {k: (got.get(k), want[k]) for k in want if got.get(k) != pytest.approx(want[k])}
        assert not mismatches, list(mismatches.items())[:3]
        probe = LagProbe({"bootstrap.servers": bootstrap}, prefix="streamml-features")
        try:
            wait_for(lambda: (rows := probe.measure()) and all(r.messages == 0 for r in rows), 60,
                     "the flow's lag to return to 0")
        finally:
            probe.close()
        assert flow.poll() is None and service.proc.poll() is None
    finally:
        stop_predicting.set()
        hangable_broker.resume()
        flow.terminate()
        flow.wait(30)
        assert service.stop() == 0
