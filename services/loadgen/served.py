"""Closes the demo loop: the predictions the simulated shop shows are asked of the inference service,
and the generator's labels are re-keyed to the served prediction ids, so the learner can join them.

Best effort by design: while the service is unreachable the labels keep the generator's ids (the
learner dead-letters them as `no_prediction`), and the load goes on at its rate.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from streams.runtime.logging import get_logger

log = get_logger(__name__)
_CHUNK = 500
_BACKOFF_S = 5.0


class ServedPredictions:
    """Generator prediction id -> served prediction id, filled by `serve`, used once by `relabel`."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 2.0):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
        self._ids: dict[str, str] = {}
        self._down_until = 0.0
        self.served = self.failed = 0

    def serve(self, issued: list[tuple[str, str, str, int]]) -> None:
        """Ask the service for these (generator id, user, item, ts) predictions; remember the served ids."""
        for start in range(0, len(issued), _CHUNK):
            chunk = issued[start:start + _CHUNK]
            if time.monotonic() < self._down_until:
                self.failed += len(chunk)
                continue
            try:
                resp = self._client.post("/v1/predict/batch", json=[
                    {"user_id": u, "item_id": i} for _p, u, i, _t in chunk])
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                self.failed += len(chunk)
                self._down_until = time.monotonic() + _BACKOFF_S
                log.warning("demo predictions not served; labels keep generator ids", error=str(exc))
                continue
            for (generated, *_rest), answer in zip(chunk, resp.json()):
                self._ids[generated] = answer["prediction_id"]
            self.served += len(chunk)

    def relabel(self, record: dict[str, Any]) -> dict[str, Any]:
        served = self._ids.pop(record["prediction_id"], None)
        return record if served is None else {**record, "prediction_id": served}

    def close(self) -> None:
        self._client.close()
