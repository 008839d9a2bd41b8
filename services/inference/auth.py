"""API keys (`X-API-Key`): predict keys may score, admin keys may also change models.

Keys are compared as SHA-256 digests held in memory, never logged. Off only when configured so.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="A predict or admin key.")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Which digests may predict and which may administer."""

    def __init__(self, enabled: bool, predict_keys: frozenset[str], admin_keys: frozenset[str]):
        self.enabled = enabled
        self._admin = frozenset(map(_digest, admin_keys))
        self._predict = frozenset(map(_digest, predict_keys)) | self._admin
        self._seen: dict[str, bytes] = {}

    def check(self, presented: str | None, admin: bool) -> None:
        if not self.enabled:
            return
        if not presented:
            raise HTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})
        digest = self._seen.get(presented)
        if digest is None:
            digest = _digest(presented)
            if len(self._seen) < 1024:  # hashing once per distinct key, not per request
                self._seen[presented] = digest
        if digest not in self._predict:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "X-API-Key"})
        if admin and digest not in self._admin:
            raise HTTPException(403, "this key may predict but not change models; use an admin key")


# async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a hand-off per request
async def require_predict(request: Request, key: Annotated[str | None, Depends(_header)]) -> None:
    request.app.state.keys.check(key, admin=False)


async def require_admin(request: Request, key: Annotated[str | None, Depends(_header)]) -> None:
    request.app.state.keys.check(key, admin=True)
