"""Operational endpoints: liveness (`/healthz`), Prometheus `/metrics`, and the read-write `/mode`.

`/mode` exists because Confluent tooling asks for it; this registry is always READWRITE.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.registry.deps import Store
from services.registry.responses import METRICS_RESPONSE, error_response, refusals

router = APIRouter(tags=["ops"])


@router.get("/")
def root() -> dict[str, str]:
    return {}


@router.get("/healthz", response_model=None, responses=refusals(503))
def healthz(store: Store) -> dict[str, str] | Response:
    """200 only while the database answers, so a supervisor restarts a registry that lost its store."""
    try:
        store.ping()
    except Exception as exc:
        return error_response(503, 50301, f"registry database unavailable: {exc}")
    return {"status": "ok"}


@router.get("/metrics", response_class=Response, responses=METRICS_RESPONSE)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/mode")
def mode() -> dict[str, str]:
    return {"mode": "READWRITE"}


@router.get("/mode/{subject:path}", responses=refusals(404, 422))
def subject_mode(subject: str) -> dict[str, str]:
    return {"mode": "READWRITE"}
