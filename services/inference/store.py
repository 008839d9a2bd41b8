"""The versioned model store in Redis: immutable snapshots, their metadata, and one active pointer.

`streamml:model:{name}:blob:{version}` holds the pickled model, `…:versions` a hash version -> JSON
metadata (labels learned, the `labels`/`predictions` offsets it reflects, progressive metrics), and
`…:active` which version serves and whether an operator pinned it (a rollback). The learner activates
each new snapshot only while nothing is pinned; activating the newest version unpins.
Pickles are only ever read from this store, which must be as trusted as the code (Redis AUTH/TLS).
"""

from __future__ import annotations

import json
import pickle
import time
from typing import Any

import redis

from schemas.errors import ModelError, ModelNotFoundError

_PREFIX = "streamml:model"


def _key(name: str, *parts: str) -> str:
    return ":".join((_PREFIX, name, *parts))


def version_label(seq: int) -> str:
    return f"v{seq:06d}"


class ModelStore:
    """Snapshots of one model name; every method is one or two Redis round trips."""

    def __init__(self, client: redis.Redis, name: str):
        self.client = client
        self.name = name
        self._versions = _key(name, "versions")
        self._active = _key(name, "active")
        self._seq = _key(name, "seq")

    # --- writing (the learner) ------------------------------------------------------------------
    def save(self, model: Any, meta: dict[str, Any], keep: int = 50, learner_state: Any = None) -> str:
        """Store a new immutable version of `model` with `meta` (and the learner's own state, which serving
        never reads); returns its label (`v000007`)."""
        blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        version = version_label(int(self.client.incr(self._seq)))
        record = {**meta, "version": version, "created_ms": int(time.time() * 1000), "bytes": len(blob)}
        pipe = self.client.pipeline(transaction=True)
        pipe.set(_key(self.name, "blob", version), blob)
        if learner_state is not None:
            pipe.set(_key(self.name, "state", version), pickle.dumps(learner_state, protocol=pickle.HIGHEST_PROTOCOL))
        pipe.hset(self._versions, version, json.dumps(record))
        pipe.execute()
        self._prune(keep)
        return version

    def activate(self, version: str, *, pinned: bool | None = None) -> dict[str, Any]:
        """Make `version` the one every serving process loads; pinned unless it is the newest version."""
        meta = self.meta(version)
        if meta is None:
            raise ModelNotFoundError(f"model {self.name!r} has no version {version!r}; see GET /v1/models")
        if meta.get("pruned"):
            raise ModelError(f"version {version!r} of {self.name!r} was pruned (only its metadata is kept); "
                             "activate a newer one or raise STREAMML_MODEL_KEEP_VERSIONS")
        if pinned is None:
            pinned = version != self.latest()
        self.client.hset(self._active, mapping={"version": version, "pinned": int(pinned),
                                                "at_ms": int(time.time() * 1000)})
        return {"version": version, "pinned": pinned}

    def activate_unless_pinned(self, version: str) -> bool:
        """The learner's auto-activation: a no-op while an operator's rollback is pinned."""
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(self._active)
                if pipe.hget(self._active, "pinned") == b"1":
                    return False
                pipe.multi()
                pipe.hset(self._active, mapping={"version": version, "pinned": 0, "at_ms": int(time.time() * 1000)})
                pipe.execute()
                return True
            except redis.WatchError:
                return False  # an operator activated something meanwhile: theirs wins

    # --- reading (serving, the learner, the API) ------------------------------------------------
    def active(self) -> tuple[str | None, bool]:
        raw = self.client.hgetall(self._active)
        return parse_active(raw)

    def load(self, version: str) -> Any:
        blob = self.client.get(_key(self.name, "blob", version))
        if blob is None:
            raise ModelError(f"model {self.name!r} version {version!r} has no stored weights (pruned or never saved)")
        try:
            return pickle.loads(blob)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing
            raise ModelError(f"model {self.name!r} version {version!r} cannot be loaded ({exc}); "
                             "activate another version") from exc

    def learner_state(self, version: str) -> Any:
        """What the learner saved beside `version` (None if nothing)."""
        blob = self.client.get(_key(self.name, "state", version))
        return pickle.loads(blob) if blob else None

    def meta(self, version: str) -> dict[str, Any] | None:
        raw = self.client.hget(self._versions, version)
        return json.loads(raw) if raw else None

    def versions(self) -> list[dict[str, Any]]:
        """Every version's metadata, oldest first."""
        raw = self.client.hgetall(self._versions)
        return sorted((json.loads(v) for v in raw.values()), key=lambda m: m["version"])

    def latest(self) -> str | None:
        versions = self.client.hkeys(self._versions)
        return max(v.decode() for v in versions) if versions else None

    def active_key(self) -> str:
        return self._active

    def _prune(self, keep: int) -> None:
        """Drop the weights of all but the newest `keep` versions (never the active one); keep metadata."""
        names = sorted(v.decode() for v in self.client.hkeys(self._versions))
        active, _ = self.active()
        for version in names[:-keep]:
            if version == active:
                continue
            meta = self.meta(version) or {}
            if meta.get("pruned"):
                continue
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(_key(self.name, "blob", version), _key(self.name, "state", version))
            pipe.hset(self._versions, version, json.dumps({**meta, "pruned": True}))
            pipe.execute()


def parse_active(raw: dict[bytes, bytes]) -> tuple[str | None, bool]:
    """(version, pinned) from the raw active hash."""
    version = raw.get(b"version")
    return (version.decode() if version else None), raw.get(b"pinned") == b"1"
