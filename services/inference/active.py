"""What one serving process serves right now: the active model version and the active feature namespace.

A thread re-reads both pointers every `reload_s` (one Redis round trip) and swaps in a newly activated
version after loading it off the request path, so every process converges on the same version within
`reload_s` with no restart. Redis away: the current model keeps serving; no version at all: the prior.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import redis

from schemas.errors import ModelError
from services.inference import metrics
from services.inference.models import Scorer, scorer
from services.inference.store import ModelStore, parse_active
from streams.features.keys import ACTIVE_NAMESPACE_KEY, DEFAULT_NAMESPACE, namespace_prefix
from streams.runtime.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Served:
    """An immutable (version, model) pair; replaced as a whole, so a request never sees half a swap."""

    version: str | None  # None = cold start: no version activated yet, the prior is served
    model: Any
    pinned: bool = False
    score: Scorer | None = None  # the model's scorer (`models.scorer`), built once when the version is loaded


class ActiveState:
    """Keeps `served` and `namespace_prefix` current; `start()` loads once before returning."""

    def __init__(self, redis_url: str, model_name: str, reload_s: float = 1.0):
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.store = ModelStore(self._client, model_name)
        self.model_name = model_name
        self.served = Served(None, None)
        self.namespace = DEFAULT_NAMESPACE
        self.namespace_prefix = ""
        self.reachable = False
        self._reload_s = reload_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-reload", daemon=True)
        self._failed: str | None = None

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()

    def refresh(self) -> None:
        """Read both pointers; load the active version if it changed. Never raises."""
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(self.store.active_key())
            pipe.get(ACTIVE_NAMESPACE_KEY)
            raw_active, raw_ns = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            if self.reachable:
                log.warning("model store unreachable; serving the loaded version", error=str(exc))
            self.reachable = False
            return
        self.reachable = True
        namespace = raw_ns.decode() if raw_ns else DEFAULT_NAMESPACE
        if namespace != self.namespace:
            log.info("serving features from namespace", namespace=namespace, previous=self.namespace)
            self.namespace, self.namespace_prefix = namespace, namespace_prefix(namespace)
        version, pinned = parse_active(raw_active)
        current = self.served
        if version is None or (version == current.version and pinned == current.pinned):
            return
        if version == current.version:
            self.served = Served(version, current.model, pinned, current.score)
            return
        try:
            model = self.store.load(version)
        except (ModelError, redis.RedisError, OSError) as exc:
            if self._failed != version:
                log.error("cannot load the active model version; keeping the current one",
                          version=version, serving=current.version, error=str(exc))
            self._failed = version
            return
        self.served = Served(version, model, pinned, scorer(model))
        metrics.MODEL_RELOADS.labels(self.model_name).inc()
        if current.version is not None:
            metrics.MODEL_VERSION.remove(self.model_name, current.version)
        metrics.MODEL_VERSION.labels(self.model_name, version).set(1)
        log.info("serving model version", model=self.model_name, version=version, previous=current.version,
                 pinned=pinned)

    def _loop(self) -> None:
        while not self._stop.wait(self._reload_s):
            self.refresh()
