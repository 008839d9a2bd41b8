"""Redis (with AUTH) restarted under the flow and the inference service: serving never answers 5xx
and flags `features_unavailable` while it is down, both recover without a restart of their own, and
the flow re-writes what it could not write, so Redis ends equal to the oracle."""

from __future__ import annotations

import pytest

from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM
from tests.flowkit import flow_env, make_events, provision, publish, read_back, start_flow, wait_for_redis
from tests.oracle import accepted_in_partition_order, expected_features
from tests.servers import ServerProcess, port_open, start_redis, wait_for
from tests.servingkit import Service, serving_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PASSWORD = "chaos-s3cret"


def _oracle(bootstrap: str, registry_url: str, count: int) -> dict:
    records = read_back(bootstrap, registry_url, [CLICKSTREAM, CDC_USERS, CDC_ITEMS], count)
    assert len(records) == count
    accepted, _ = accepted_in_partition_order([(p, o, t, r) for p, o, t, r, _ in records], 300_000)
    return expected_features(accepted)


def _assert_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    mismatches = {k: (got[k], want[k]) for k in want if got[k] != pytest.approx(want[k])}
    assert not mismatches, list(mismatches.items())[:3]


def test_redis_restart_under_flow_and_serving(fresh_kafka, registry_url, server_logs, tmp_path):
    redis = start_redis(server_logs, password=PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0"
    provision(fresh_kafka)
    events = make_events(seed=41, users=60, items=20, events=4_000)
    first, second = events[:2_000], events[2_000:]
    flow = start_flow(flow_env(tmp_path / "flow-home", fresh_kafka, registry_url, url), tmp_path / "flow.log")
    service = Service(serving_env(tmp_path / "serve-home", fresh_kafka, registry_url, url, "redischaos"),
                      tmp_path).start()
    try:
        publish(fresh_kafka, registry_url, first)
        _assert_equal(wait_for_redis(url, _oracle(fresh_kafka, registry_url, len(first)), 60),
                      _oracle(fresh_kafka, registry_url, len(first)))
        healthy = service.predict("u1", "i1")
        assert "features_unavailable" not in healthy["degraded"] and healthy["feature_age_ms"] is not None

        redis.stop()  # SIGTERM: Redis saves its RDB and exits
        assert not port_open(redis.port)
        publish(fresh_kafka, registry_url, second)  # the flow cannot write these yet
        down = [service.client.post("/v1/predict", json={"user_id": f"u{i}", "item_id": "i2"}) for i in range(30)]
        assert [r.status_code for r in down] == [200] * 30
        assert all("features_unavailable" in r.json()["degraded"] for r in down)

        redis = ServerProcess("redis", redis.argv, redis.port, server_logs).start()
        want = _oracle(fresh_kafka, registry_url, len(events))
        _assert_equal(wait_for_redis(url, want, 90), want)
        wait_for(lambda: "features_unavailable" not in service.predict("u2", "i2")["degraded"], 30,
                 "serving to recover")
        assert service.predict("u3", "i3")["feature_age_ms"] is not None
        assert flow.poll() is None and service.proc.poll() is None
        assert PASSWORD not in service.log() and PASSWORD not in (tmp_path / "flow.log").read_text()
    finally:
        flow.terminate()
        flow.wait(30)
        service.stop()
        redis.stop()
