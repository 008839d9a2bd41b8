"""`/schemas`: schemas by global id (what deserializers and kcat fetch) and the supported types.

A soft-deleted version still serves its schema by id: records written with it are still on topics.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from services.registry.deps import Store, page
from services.registry.responses import raw_schema, refusals

router = APIRouter(tags=["schemas"])
_READ = refusals(404, 422)


@router.get("/schemas/types")
def schema_types() -> list[str]:
    return ["AVRO"]


@router.get("/schemas/ids/{schema_id}", responses=_READ)
def schema_by_id(schema_id: int, store: Store) -> dict[str, Any]:
    return {"schema": store.schema_by_id(schema_id), "schemaType": "AVRO"}


@router.get("/schemas/ids/{schema_id}/schema", responses=_READ)
def raw_schema_by_id(schema_id: int, store: Store) -> Response:
    return raw_schema(store.schema_by_id(schema_id))


@router.get("/schemas/ids/{schema_id}/versions", responses=_READ)
def versions_of_id(
    schema_id: int,
    store: Store,
    subject: str | None = None,
    deleted: bool = False,
    offset: int = 0,
    limit: int = -1,
) -> list[dict[str, Any]]:
    pairs = [(s, v) for s, v in store.versions_of_id(schema_id, deleted) if subject in (None, s)]
    return page([{"subject": s, "version": v} for s, v in pairs], offset, limit)


@router.get("/schemas/ids/{schema_id}/subjects", responses=_READ)
def subjects_of_id(
    schema_id: int,
    store: Store,
    subject: str | None = None,
    deleted: bool = False,
    offset: int = 0,
    limit: int = -1,
) -> list[str]:
    names = dict.fromkeys(s for s, _ in store.versions_of_id(schema_id, deleted) if subject in (None, s))
    return page(list(names), offset, limit)
