"""`/subjects`: register, look up, list and delete the versions of a subject.

Subjects are `{subject:path}` so URL-encoded names with `/` (sent as %2F) still route.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from schemas.errors import IncompatibleSchemaError, SchemaError
from services.registry.deps import SchemaBody, Store, page, parse_version, require_admin
from services.registry.errors import RegistryRequestError
from services.registry.metrics import REGISTRATIONS
from services.registry.responses import raw_schema, refusals
from services.registry.store import SubjectVersion
from streams.runtime.logging import get_logger

router = APIRouter(tags=["subjects"])
log = get_logger("registry")
_ADMIN = [Depends(require_admin)]
_READ, _CHANGE = refusals(404, 422), refusals(401, 403, 404, 422)


def version_body(found: SubjectVersion) -> dict[str, Any]:
    return {
        "subject": found.subject, "version": found.version, "id": found.schema_id,
        "schema": found.schema, "schemaType": "AVRO",
    }


@router.get("/subjects", responses=refusals(422))
def list_subjects(
    store: Store,
    deleted: bool = False,
    deleted_only: bool = False,
    deleted_only_camel: Annotated[bool, Query(alias="deletedOnly")] = False,
    subject_prefix: Annotated[str, Query(alias="subjectPrefix")] = "",
    offset: int = 0,
    limit: int = -1,
) -> list[str]:
    only = deleted_only or deleted_only_camel
    return page(store.subjects(deleted, only, subject_prefix), offset, limit)


@router.get("/subjects/{subject:path}/versions", responses=_READ)
def list_versions(
    subject: str,
    store: Store,
    deleted: bool = False,
    deleted_only: bool = False,
    deleted_only_camel: Annotated[bool, Query(alias="deletedOnly")] = False,
    offset: int = 0,
    limit: int = -1,
) -> list[int]:
    return page(store.versions(subject, deleted, deleted_only or deleted_only_camel), offset, limit)


@router.post("/subjects/{subject:path}/versions", dependencies=_ADMIN,
             responses=refusals(400, 401, 403, 404, 409, 422))
def register(subject: str, body: SchemaBody, store: Store) -> dict[str, int]:
    """Confluent answers `{"id": N}`; the client keeps the schema it sent."""
    try:
        found, created = store.register(subject, body.avro())
    except IncompatibleSchemaError:
        REGISTRATIONS.labels("incompatible").inc()
        raise
    except (SchemaError, RegistryRequestError):
        REGISTRATIONS.labels("invalid").inc()
        raise
    REGISTRATIONS.labels("new" if created else "existing").inc()
    if created:
        log.info("schema registered", subject=subject, version=found.version, id=found.schema_id)
    return {"id": found.schema_id}


@router.get("/subjects/{subject:path}/versions/{version}/schema", responses=_READ)
def get_version_schema(
    subject: str, version: str, store: Store, deleted: bool = False
) -> Response:
    return raw_schema(store.get_version(subject, parse_version(version), deleted).schema)


@router.get("/subjects/{subject:path}/versions/{version}/referencedby", responses=_READ)
def referenced_by(subject: str, version: str, store: Store) -> list[int]:
    """Always empty: this registry does not support schema references."""
    store.get_version(subject, parse_version(version))
    return []


@router.get("/subjects/{subject:path}/versions/{version}", responses=_READ)
def get_version(
    subject: str, version: str, store: Store, deleted: bool = False
) -> dict[str, Any]:
    return version_body(store.get_version(subject, parse_version(version), deleted))


@router.delete("/subjects/{subject:path}/versions/{version}", dependencies=_ADMIN, responses=_CHANGE)
def delete_version(subject: str, version: str, store: Store, permanent: bool = False) -> int:
    number = store.delete_version(subject, parse_version(version), permanent)
    log.info("schema version deleted", subject=subject, version=number, permanent=permanent)
    return number


# the bare-subject routes come last: `{subject:path}` would also match ".../versions"
@router.post("/subjects/{subject:path}", responses=refusals(400, 404, 422))
def lookup(
    subject: str, body: SchemaBody, store: Store, deleted: bool = False
) -> dict[str, Any]:
    return version_body(store.lookup(subject, body.avro(), deleted))


@router.delete("/subjects/{subject:path}", dependencies=_ADMIN, responses=_CHANGE)
def delete_subject(subject: str, store: Store, permanent: bool = False) -> list[int]:
    versions = store.delete_subject(subject, permanent)
    log.info("subject deleted", subject=subject, versions=versions, permanent=permanent)
    return versions
