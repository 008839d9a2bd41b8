"""`/compatibility`: would this schema be accepted as the subject's next version, and if not, why.

Answers `{"is_compatible": bool, "messages": [...]}`; each message names the field at fault.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.registry.deps import SchemaBody, Store, parse_version
from services.registry.responses import refusals

router = APIRouter(tags=["compatibility"], responses=refusals(400, 404, 422))


@router.post("/compatibility/subjects/{subject:path}/versions/{version}")
def against_version(
    subject: str, version: str, body: SchemaBody, store: Store
) -> dict[str, Any]:
    """Against one version (or the latest), in the direction of the subject's level."""
    messages = store.check_compatibility(subject, body.avro(), parse_version(version))
    return {"is_compatible": not messages, "messages": messages}


@router.post("/compatibility/subjects/{subject:path}/versions")
def against_level(subject: str, body: SchemaBody, store: Store) -> dict[str, Any]:
    """Against the versions the subject's level names: the latest, or all of them when transitive."""
    messages = store.check_compatibility(subject, body.avro())
    return {"is_compatible": not messages, "messages": messages}
