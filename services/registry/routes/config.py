"""`/config`: the compatibility level, global (default BACKWARD) or per subject.

GET answers `{"compatibilityLevel": ...}`, PUT takes and answers `{"compatibility": ...}`, as Confluent does.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from services.registry.deps import ConfigBody, Store, require_admin
from services.registry.responses import refusals
from streams.runtime.logging import get_logger

router = APIRouter(tags=["config"])
log = get_logger("registry")
_ADMIN = [Depends(require_admin)]


@router.get("/config")
def get_global(store: Store) -> dict[str, str]:
    return {"compatibilityLevel": store.compatibility()}


@router.put("/config", dependencies=_ADMIN, responses=refusals(400, 401, 403, 422))
def put_global(body: ConfigBody, store: Store) -> dict[str, str]:
    level = store.set_compatibility(body.level())
    log.info("compatibility set", subject=None, compatibility=level)
    return {"compatibility": level}


@router.delete("/config", dependencies=_ADMIN, responses=refusals(401, 403))
def reset_global(store: Store) -> dict[str, str]:
    return {"compatibilityLevel": store.delete_compatibility()}


@router.get("/config/{subject:path}", responses=refusals(404, 422))
def get_subject(subject: str, store: Store) -> dict[str, str]:
    """The level in force for the subject (its own, else the global one), also for an unknown subject."""
    return {"compatibilityLevel": store.compatibility(subject)}


@router.put("/config/{subject:path}", dependencies=_ADMIN, responses=refusals(400, 401, 403, 404, 422))
def put_subject(subject: str, body: ConfigBody, store: Store) -> dict[str, str]:
    level = store.set_compatibility(body.level(), subject)
    log.info("compatibility set", subject=subject, compatibility=level)
    return {"compatibility": level}


@router.delete("/config/{subject:path}", dependencies=_ADMIN, responses=refusals(401, 403, 404, 422))
def reset_subject(subject: str, store: Store) -> dict[str, str]:
    return {"compatibilityLevel": store.delete_compatibility(subject)}
