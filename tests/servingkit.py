"""Helpers for inference tests: start the service and the learner as real processes, seed features."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis as redis_lib

from streams.features.keys import encode_value, feature_key
from tests.servers import free_port, wait_for

PREDICT_KEY, ADMIN_KEY = "test-predict-key", "test-admin-key"


def serving_env(home: Path, bootstrap: str, registry_url: str, redis_url: str, model: str, **extra: str) -> dict:
    return {**os.environ, "STREAMML_HOME": str(home), "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMML_SCHEMA_REGISTRY_URL": registry_url, "STREAMML_REDIS_URL": redis_url,
            "STREAMML_MODEL_NAME": model, "STREAMML_INFERENCE_API_KEYS": PREDICT_KEY,
            "STREAMML_INFERENCE_ADMIN_KEYS": ADMIN_KEY, "STREAMML_INFERENCE_RELOAD_S": "0.2",
            "STREAMML_LEARNER_METRICS_PORT": "0", "STREAMML_LOG_FORMAT": "json", **extra}


class Service:
    """`streamml run inference` on a free port; `.client` speaks to it with the predict key."""

    def __init__(self, env: dict, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.env = {**env, "STREAMML_INFERENCE_PORT": str(self.port)}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"inference-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.client = httpx.Client(base_url=self.url, headers={"X-API-Key": PREDICT_KEY}, timeout=10)
        self.admin = httpx.Client(base_url=self.url, headers={"X-API-Key": ADMIN_KEY}, timeout=10)

    def start(self) -> Service:
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "inference"], env=self.env,
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.client.get("/readyz").status_code == 200 or self.proc.poll() is not None, 60,
                 f"inference on {self.port}")
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        return self

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(30)
        return self.proc.returncode if self.proc else 0

    def predict(self, user: str, item: str, **context: Any) -> dict:
        resp = self.client.post("/v1/predict", json={"user_id": user, "item_id": item, "context": context})
        assert resp.status_code == 200, resp.text
        return resp.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_learner(env: dict, log_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", "learner"], env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def seed_features(url: str, rows: dict[tuple[str, str], dict[str, Any]], ts: int) -> None:
    """Write `feat:{entity}:{id}` hashes as the flow would (absolute values and `_ts`)."""
    client = redis_lib.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for (entity, eid), values in rows.items():
        pipe.hset(feature_key(entity, eid), mapping={**{k: encode_value(v) for k, v in values.items()}, "_ts": ts})
    pipe.execute()
