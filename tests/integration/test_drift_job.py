"""The drift job (faust) end to end: reference via the CLI, PSI windows over the prediction log on a real
broker, a SIGKILL mid-stream, then every window's metrics equal a brute-force oracle, counted once."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib

from schemas.codec import frame
from schemas.registry import RegistryClient
from schemas.serde import TopicSerde
from schemas.topics import DRIFT_METRICS, PREDICTIONS
from streams.drift.psi import histogram, psi
from streams.drift.reference import SCORE, ProfileStore
from tests.flowkit import cli, flow_env, provision, publish, read_back
from tests.servers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
W = 60_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % W


def _prediction(rng: random.Random, n: int, ts: int, shift: float) -> dict:
    return {"prediction_id": f"p{n}", "model": "m", "model_version": "v1", "entities": {"user": "u", "item": "i"},
            "features": {"user.views_1h": float(rng.randint(0, 20) + int(shift * 40)),
                         "request.device": rng.choice(["mobile", "desktop"]) if not shift else "app"},
            "score": min(1.0, max(0.0, rng.gauss(0.3 + shift, 0.1))), "ts": ts, "latency_ms": 1.0}


def _start(env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", "drift"], env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def test_drift_job_survives_sigkill_and_matches_the_oracle(fresh_kafka, registry_url, redis_db_url, tmp_path):
    provision(fresh_kafka)
    rng = random.Random(8)
    reference = [_prediction(rng, n, T0 - W + rng.randrange(W), 0.0) for n in range(2000)]
    windows = [[_prediction(rng, 10_000 + k * 1000 + j, T0 + k * W + rng.randrange(W), 0.25 if k >= 3 else 0.0)
                for j in range(300)] for k in range(7)]
    stream = [p for w in windows for p in sorted(w, key=lambda r: r["ts"])]
    env = flow_env(tmp_path / "home", fresh_kafka, registry_url, redis_db_url, STREAMML_DRIFT_WINDOW_S="60",
                   STREAMML_DRIFT_LATENESS_S="5", STREAMML_DRIFT_IDLE_CLOSE_S="3", STREAMML_DRIFT_METRICS_PORT="0",
                   STREAMML_DRIFT_BATCH="500", STREAMML_DRIFT_BATCH_WITHIN_S="0.2")

    publish(fresh_kafka, registry_url, [(PREDICTIONS, r) for r in reference])
    cli(env, "drift", "reference", "--since", str(T0 - W), "--until", str(T0 - 1), "--json")
    profile = ProfileStore(redis_lib.Redis.from_url(redis_db_url)).load("m", "v1")
    assert profile is not None and profile.rows == 2000 and SCORE in profile.bins

    client = redis_lib.Redis.from_url(redis_db_url)
    corrupt = frame(TopicSerde(PREDICTIONS, RegistryClient(registry_url)).schema_id, b"\x02x")  # id "x", then nothing
    job = _start(env, tmp_path / "drift-1.log")
    try:
        # undecodable records among them: dead-lettered, and they must not hide the good ones before them;
        # the second is framed with the contract's schema id, so in a batch of 500 it reaches (and is refused by)
        # the bulk decoder (which takes batches of BULK_MIN = 384 or more)
        publish(fresh_kafka, registry_url, [(PREDICTIONS, r) for r in stream[:1000]],
                garbage=[(PREDICTIONS, b"not avro at all"), (PREDICTIONS, corrupt)])
        wait_for(lambda: any(client.scan_iter("drift:state:*")), 60, "the job to count the first records")
        time.sleep(1.0)
        job.kill()  # SIGKILL mid-stream
        job.wait(10)
        publish(fresh_kafka, registry_url, [(PREDICTIONS, r) for r in stream[1000:]])
        job = _start(env, tmp_path / "drift-2.log")
        want = 8 * len(profile.bins)  # the reference's own window is measured too, then the 7
        wait_for(lambda: len({(m["window_start"], m["feature"]) for m in _metrics(fresh_kafka, registry_url)})
                 >= want, 90, "metrics of all 8 windows")
    finally:
        job.terminate()
        job.wait(30)

    from tests.flowkit import read_dead_letters

    letters = read_dead_letters(fresh_kafka, ["predictions.dlq"], 10**9, timeout_s=3)
    assert [letter["value"] for letter in letters] == [b"not avro at all", corrupt], \
        [letter.get("streamml.error.reason") for letter in letters]  # nothing late, each bad record once
    assert letters[1]["streamml.error.reason"] == "invalid_avro"
    latest = {}
    for m in _metrics(fresh_kafka, registry_url):  # a window re-emitted after the kill must say the same
        latest[(m["window_start"], m["feature"])] = m
    everything = reference + stream
    assert {start for start, _ in latest} == {T0 + k * W for k in range(-1, 7)}
    for (start, feature), metric in latest.items():
        rows = [r for r in everything if start <= r["ts"] < start + W]
        bins = profile.bins[feature]
        values = [r["score"] if feature == SCORE else r["features"][feature] for r in rows]
        assert metric["n"] == len(rows), (start, feature)  # every prediction counted exactly once
        assert abs(metric["psi"] - psi(bins.expected, histogram(bins, values))) < 1e-9
    score = [latest[(T0 + k * W, SCORE)] for k in range(7)]
    assert [m["severity"] == "critical" for m in score] == [k >= 3 for k in range(7)]
    assert [m["alert"] for m in score] == [k >= 5 for k in range(7)]
    assert client.hget(f"drift:m:{SCORE}", "severity") == b"critical"


def _metrics(bootstrap: str, registry_url: str) -> list[dict]:
    return [r for _p, _o, _t, r, _raw in read_back(bootstrap, registry_url, [DRIFT_METRICS], 10**9, timeout_s=2) if r]


def test_first_k_windows_become_the_reference_when_none_was_frozen(fresh_kafka, registry_url, redis_db_url,
                                                                     tmp_path):
    from streams.drift.reference import profile_of

    provision(fresh_kafka)
    rng = random.Random(9)
    windows = [[_prediction(rng, k * 1000 + j, T0 + k * W + rng.randrange(W), 0.25 if k >= 4 else 0.0)
                for j in range(300)] for k in range(6)]
    env = flow_env(tmp_path / "home", fresh_kafka, registry_url, redis_db_url, STREAMML_DRIFT_WINDOW_S="60",
                   STREAMML_DRIFT_LATENESS_S="5", STREAMML_DRIFT_IDLE_CLOSE_S="3", STREAMML_DRIFT_METRICS_PORT="0",
                   STREAMML_DRIFT_BATCH="200", STREAMML_DRIFT_BATCH_WITHIN_S="0.2",
                   STREAMML_DRIFT_REFERENCE_WINDOWS="2")
    client = redis_lib.Redis.from_url(redis_db_url)
    job = _start(env, tmp_path / "drift.log")
    try:
        publish(fresh_kafka, registry_url, [(PREDICTIONS, r) for w in windows[:2] for r in sorted(w, key=lambda r: r["ts"])])
        wait_for(lambda: client.llen("drift:autoref:m:v1:rows") == 600, 60, "the reference sample")
        publish(fresh_kafka, registry_url, [(PREDICTIONS, r) for w in windows[2:] for r in sorted(w, key=lambda r: r["ts"])])
        wait_for(lambda: len({(m["window_start"], m["feature"]) for m in _metrics(fresh_kafka, registry_url)})
                 >= 4 * 3, 90, "metrics of the 4 windows after the reference")
    finally:
        job.terminate()
        job.wait(30)

    profile = ProfileStore(client).load("m", "v1")
    assert profile is not None and profile.automatic and profile.source.startswith("first 2 windows") and profile.rows == 600
    oracle = profile_of("m", "v1", [r for w in windows[:2] for r in w])
    assert profile.bins.keys() == oracle.bins.keys()
    for name, bins in profile.bins.items():  # equal up to float summation order (mean, std)
        got, want = bins.to_dict(), oracle.bins[name].to_dict()
        assert got.keys() == want.keys()
        for field, value in got.items():
            assert (value == want[field] if value is None or isinstance(value, (str, dict))
                    else value == pytest.approx(want[field])), (name, field)
    assert not client.exists("drift:autoref:m:v1", "drift:autoref:m:v1:rows")
    latest = {(m["window_start"], m["feature"]): m for m in _metrics(fresh_kafka, registry_url)}
    assert {start for start, _ in latest} == {T0 + k * W for k in range(2, 6)}  # reference windows not measured
    for (start, feature), metric in latest.items():
        rows = windows[(start - T0) // W]
        values = [r["score"] if feature == SCORE else r["features"][feature] for r in rows]
        assert metric["n"] == len(rows)
        assert abs(metric["psi"] - psi(profile.bins[feature].expected, histogram(profile.bins[feature], values))) < 1e-9
    assert [latest[(T0 + k * W, SCORE)]["severity"] == "critical" for k in range(2, 6)] == [False, False, True, True]
