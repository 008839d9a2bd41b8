"""`/healthz` (the process runs), `/readyz` (it serves, and how well), `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: serving (possibly degraded) and the state of each dependency")
async def readyz(request: Request) -> dict:
    state = request.app.state
    return {"ready": True, "model": state.active.model_name, "model_version": state.active.served.version,
            "feature_namespace": state.active.namespace, "redis": await state.features.ping(),
            "prediction_log": state.prediction_log.stats()}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
