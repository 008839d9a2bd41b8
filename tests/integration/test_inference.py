"""The inference service end to end through HTTP, against real Redis, a real broker and a real learner."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis as redis_lib

from schemas.registry import RegistryClient
from schemas.topics import LABELS, PREDICTIONS
from services.producer import EventProducer
from streams.features.definitions import defaults, served_features
from tests.flowkit import provision, read_back
from tests.servers import ServerProcess, free_port, start_redis, wait_for
from tests.servingkit import Service, seed_features, serving_env, start_learner

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def topics(kafka_bootstrap: str) -> str:
    provision(kafka_bootstrap)
    return kafka_bootstrap


def _logged(bootstrap: str, registry_url: str, model: str, ids: set[str], timeout_s: float = 60) -> dict:
    """PredictionLog records of `model` with these ids, read from the topic (waits until all are there)."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(found) < len(ids):
        for _p, _o, _t, record, _raw in read_back(bootstrap, registry_url, [PREDICTIONS], 10**9, timeout_s=3):
            if record and record["model"] == model and record["prediction_id"] in ids:
                found[record["prediction_id"]] = record
    return found


def test_predict_serves_defaults_context_and_logs_the_exact_features(
        topics: str, registry_url: str, redis_db_url: str, tmp_path: Path, unique: str) -> None:
    now = int(time.time() * 1000)
    seed_features(redis_db_url, {("user", "u1"): {"views_1h": 7, "spend_24h": 12.5, "tier": "gold"},
                                 ("item", "i1"): {"price": 9.99, "category": "books"}}, now - 2000)
    service = Service(serving_env(tmp_path, topics, registry_url, redis_db_url, f"m{unique}"), tmp_path).start()
    try:
        known = service.predict("u1", "i1", device="mobile", position=3)
        unknown = service.predict("nobody", "nothing")
        assert known["model_version"] == "prior" and known["degraded"] == ["cold_start"]
        assert known["score"] == pytest.approx(0.05)
        assert 2000 <= known["feature_age_ms"] < 60_000
        assert unknown["feature_age_ms"] is None
        batch = service.client.post("/v1/predict/batch", json=[
            {"user_id": "u1", "item_id": "i1"}, {"user_id": "u2", "item_id": "i1", "context": {"device": "app"}}])
        assert batch.status_code == 200 and len(batch.json()) == 2

        # bad requests name the field; keys are checked
        bad = service.client.post("/v1/predict", json={"user_id": "u1", "context": {"position": "top"}})
        assert bad.status_code == 422
        fields = {e["field"] for e in bad.json()["detail"]}
        assert {"body.item_id", "body.context.position"} <= fields
        assert service.client.post("/v1/predict/batch", json=[]).status_code == 422
        assert httpx.post(f"{service.url}/v1/predict", json={"user_id": "u", "item_id": "i"}).status_code == 401
        wrong = httpx.post(f"{service.url}/v1/predict", json={"user_id": "u", "item_id": "i"},
                           headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        assert service.client.post("/v1/models/v000001/activate").status_code == 403
        assert service.admin.post("/v1/models/v999999/activate").status_code == 404
        assert service.client.get("/openapi.json").json()["paths"].keys() >= {"/v1/predict", "/v1/predict/batch"}
        assert "streamml_inference_requests_total" in service.client.get("/metrics").text
    finally:
        assert service.stop() == 0  # SIGTERM: drained, log flushed, clean exit

    ids = {known["prediction_id"], unknown["prediction_id"], *(p["prediction_id"] for p in batch.json())}
    logged = _logged(topics, registry_url, f"m{unique}", ids)
    assert logged.keys() == ids
    record = logged[known["prediction_id"]]
    assert set(record["features"]) == set(served_features())
    want = {**defaults(), "user.views_1h": 7, "user.spend_24h": 12.5, "user.tier": "gold", "item.price": 9.99,
            "item.category": "books", "request.device": "mobile", "request.position": 3}
    for name, value in want.items():
        assert record["features"][name] == value, name
    assert record["entities"] == {"user": "u1", "item": "i1"}
    assert record["score"] == known["score"] and record["model_version"] == "prior"
    nobody = logged[unknown["prediction_id"]]["features"]
    assert all(nobody[name] == value for name, value in defaults().items())
    assert nobody["request.device"] == "unknown"


def _truth(user: dict, item: dict) -> float:
    """The known signal the learner must find: cart adds, item CTR and tier drive purchases."""
    logit = 0.9 * (user["cart_adds_1h"] - 2) + 5.0 * (item["ctr_1h"] - 0.5) + (1.5 if user["tier"] == "gold" else -0.5)
    return 1.0 / (1.0 + math.exp(-logit))


def _auc(scores: list[float], labels: list[int]) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half)."""
    s, y = np.asarray(scores), np.asarray(labels)
    pos, neg = s[y == 1], s[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _labels(producer: EventProducer, results: list[dict], pairs: list[tuple[str, str]], users: dict, items: dict,
            rng: random.Random) -> list[int]:
    out = []
    for result, (u, i) in zip(results, pairs):
        label = int(rng.random() < _truth(users[u], items[i]))
        out.append(label)
        producer.publish(LABELS, {"prediction_id": result["prediction_id"], "label": label,
                                  "ts": int(time.time() * 1000), "source": "client"})
    assert producer.flush(30) == 0
    return out


def _wait_serving(service: Service, learned: int, timeout_s: float = 90) -> dict:
    """Until this process serves a version that learned at least `learned` labels; returns its metadata."""
    state: dict = {}

    def ready() -> bool:
        nonlocal state
        state = service.client.get("/v1/models").json()
        serving = [v for v in state["versions"] if v["version"] == state["serving"]]
        return bool(serving) and serving[0]["labels_learned"] >= learned
    wait_for(ready, timeout_s, f"a served version with {learned} labels")
    return next(v for v in state["versions"] if v["version"] == state["serving"])


@pytest.mark.slow
def test_learner_learns_the_signal_and_rollback_restores_old_scores(
        topics: str, registry_url: str, redis_db_url: str, tmp_path: Path, unique: str) -> None:
    rng = random.Random(7)
    users = {f"u{k}": {"cart_adds_1h": rng.randint(0, 5), "views_1h": rng.randint(0, 30),
                       "tier": rng.choice(["gold", "silver", "basic"])} for k in range(300)}
    items = {f"i{k}": {"ctr_1h": rng.random(), "price": round(rng.uniform(1, 200), 2)} for k in range(60)}
    seed_features(redis_db_url, {**{("user", u): v for u, v in users.items()},
                                 **{("item", i): v for i, v in items.items()}}, int(time.time() * 1000))
    model = f"m{unique}"
    env = serving_env(tmp_path, topics, registry_url, redis_db_url, model, STREAMML_LEARNER_SNAPSHOT_LABELS="500",
                      STREAMML_LEARNER_SNAPSHOT_S="1", STREAMML_LEARNER_LABEL_WAIT_S="60")
    service = Service(env, tmp_path).start()
    replica = Service(env, tmp_path).start()  # a second serving process: it must follow the same version
    learner = start_learner(env, tmp_path / "learner.log")
    producer = EventProducer({"bootstrap.servers": topics}, RegistryClient(registry_url))
    try:
        def score_batch(pairs: list[tuple[str, str]], via: Service = service) -> list[dict]:
            out = []
            for start in range(0, len(pairs), 100):
                resp = via.client.post("/v1/predict/batch", json=[
                    {"user_id": u, "item_id": i} for u, i in pairs[start:start + 100]])
                assert resp.status_code == 200, resp.text
                out += resp.json()
            return out

        def draw(n: int) -> list[tuple[str, str]]:
            return [(rng.choice(list(users)), rng.choice(list(items))) for _ in range(n)]

        train = draw(4000)
        _labels(producer, score_batch(train), train, users, items, rng)
        first = _wait_serving(service, 4000)
        assert learner.poll() is None

        held_out = draw(1500)
        results = score_batch(held_out)
        assert {r["model_version"] for r in results} == {first["version"]} and not results[0]["degraded"]
        truth = _labels(producer, results, held_out, users, items, rng)
        auc = _auc([r["score"] for r in results], truth)
        assert auc >= 0.75, f"held-out ROC AUC {auc:.3f}"
        assert first["roc_auc"] > 0.7  # the learner's own progressive estimate agrees

        probe = draw(20)
        before = [r["score"] for r in score_batch(probe)]
        newer = _wait_serving(service, 5500)  # the held-out labels were learned too: a newer version serves
        assert newer["version"] > first["version"]
        assert [r["score"] for r in score_batch(probe)] != before

        rolled = service.admin.post(f"/v1/models/{first['version']}/activate")
        assert rolled.status_code == 200 and rolled.json()["pinned"] is True
        after = score_batch(probe)
        assert [r["score"] for r in after] == before
        assert {r["model_version"] for r in after} == {first["version"]}
        wait_for(lambda: replica.client.get("/v1/models").json()["serving"] == first["version"], 10,
                 "the replica to follow the rollback")
        # same version, same scores; across processes up to the last bit only: River sums over sets of
        # feature names, whose order follows each interpreter's hash seed
        assert [r["score"] for r in score_batch(probe, via=replica)] == pytest.approx(before, rel=1e-12)

        # pinned: new snapshots are stored but not activated until the newest is activated again
        _labels(producer, score_batch(probe), probe, users, items, rng)
        wait_for(lambda: service.client.get("/v1/models").json()["versions"][-1]["labels_learned"] >= 5520, 60,
                 "a snapshot after the rollback")
        assert service.client.get("/v1/models").json()["active"] == first["version"]
        latest = service.client.get("/v1/models").json()["versions"][-1]["version"]
        assert service.admin.post(f"/v1/models/{latest}/activate").json()["pinned"] is False
    finally:
        producer.close()
        learner.terminate()
        assert learner.wait(30) == 0
        service.stop()
        replica.stop()


def test_redis_outage_serves_defaults_flagged_then_recovers(
        topics: str, registry_url: str, server_logs: Path, tmp_path: Path, unique: str) -> None:
    own = start_redis(server_logs)
    url = f"redis://127.0.0.1:{own.port}/0"
    seed_features(url, {("user", "u1"): {"views_1h": 3}}, int(time.time() * 1000))
    service = Service(serving_env(tmp_path, topics, registry_url, url, f"m{unique}",
                                  STREAMML_INFERENCE_REDIS_RETRY_S="0.2"), tmp_path).start()
    try:
        assert "features_unavailable" not in service.predict("u1", "i1")["degraded"]
        own.stop()
        during = [service.client.post("/v1/predict", json={"user_id": "u1", "item_id": "i1"}) for _ in range(30)]
        assert {r.status_code for r in during} == {200}
        assert all("features_unavailable" in r.json()["degraded"] for r in during)
        assert service.client.get("/readyz").json()["redis"] is False
        own.start()
        seed_features(url, {("user", "u1"): {"views_1h": 3}}, int(time.time() * 1000))
        wait_for(lambda: "features_unavailable" not in service.predict("u1", "i1")["degraded"], 20,
                 "recovery after Redis is back")
        assert service.predict("u1", "i1")["feature_age_ms"] is not None
    finally:
        service.stop()
        own.stop()


def test_predictions_made_while_the_broker_is_down_are_delivered_later(
        registry_url: str, redis_db_url: str, server_logs: Path, tmp_path: Path, unique: str) -> None:
    from services.stack.binaries import tansu_argv

    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    service = Service(serving_env(tmp_path, bootstrap, registry_url, redis_db_url, f"m{unique}"), tmp_path).start()
    broker = ServerProcess("tansu", tansu_argv(port), port, server_logs)
    try:
        ids = {service.predict(f"u{k}", "i1")["prediction_id"] for k in range(50)}
        assert service.client.get("/readyz").json()["prediction_log"]["delivered"] == 0
        broker.start()
        provision(bootstrap)
        logged = _logged(bootstrap, registry_url, f"m{unique}", ids, timeout_s=90)
        assert logged.keys() == ids
        wait_for(lambda: service.client.get("/readyz").json()["prediction_log"]["delivered"] == 50, 30,
                 "delivery counted")
    finally:
        assert service.stop() == 0
        broker.stop()
    assert redis_lib.Redis.from_url(redis_db_url).ping()


@pytest.mark.slow
def test_a_learner_killed_mid_stream_resumes_without_learning_any_label_twice(
        topics: str, registry_url: str, redis_db_url: str, tmp_path: Path, unique: str) -> None:
    model = f"m{unique}"
    env = serving_env(tmp_path, topics, registry_url, redis_db_url, model, STREAMML_LEARNER_SNAPSHOT_LABELS="50",
                      STREAMML_LEARNER_SNAPSHOT_S="0.5")
    service = Service(env, tmp_path).start()
    producer = EventProducer({"bootstrap.servers": topics}, RegistryClient(registry_url))
    learner = start_learner(env, tmp_path / "learner-1.log")
    try:
        served = []
        for start in range(0, 600, 100):
            resp = service.client.post("/v1/predict/batch", json=[
                {"user_id": f"u{k}", "item_id": f"i{k % 7}"} for k in range(start, start + 100)])
            served += resp.json()
        rng = random.Random(3)
        for result in served[:300]:
            producer.publish(LABELS, {"prediction_id": result["prediction_id"], "label": rng.randint(0, 1),
                                      "ts": int(time.time() * 1000), "source": "client"})
        assert producer.flush(30) == 0
        store = redis_lib.Redis.from_url(redis_db_url)
        from services.inference.store import ModelStore

        models = ModelStore(store, model)
        wait_for(lambda: models.latest() is not None and models.meta(models.latest())["labels_learned"] >= 100, 60,
                 "a first snapshot")
        learner.kill()  # SIGKILL, mid-stream: whatever it learned since its last snapshot is lost
        learner.wait(10)
        for result in served[300:]:
            producer.publish(LABELS, {"prediction_id": result["prediction_id"], "label": rng.randint(0, 1),
                                      "ts": int(time.time() * 1000), "source": "client"})
        assert producer.flush(30) == 0
        learner = start_learner(env, tmp_path / "learner-2.log")
        wait_for(lambda: models.meta(models.latest())["labels_learned"] >= 600, 60, "all labels learned")
        time.sleep(2)  # nothing more may arrive: every label exactly once
        assert models.meta(models.latest())["labels_learned"] == 600
    finally:
        producer.close()
        learner.terminate()
        learner.wait(30)
        service.stop()
