"""`GET /v1/models` and `POST /v1/models/{version}/activate` (rollback or roll forward; admin key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from services.inference.auth import require_admin, require_predict
from services.inference.contracts import ActivateResponse, ModelsResponse, refusals

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelsResponse, dependencies=[Depends(require_predict)],
            responses=refusals(401, 503),
            summary="Every stored version, the active one and the one this process serves")
def list_models(request: Request) -> dict:
    active = request.app.state.active
    version, pinned = active.store.active()
    return {"model": active.model_name, "active": version, "pinned": pinned,
            "serving": active.served.version, "versions": active.store.versions()}


@router.post("/{version}/activate", response_model=ActivateResponse, dependencies=[Depends(require_admin)],
             responses=refusals(401, 403, 404, 409, 422, 503),
             summary="Serve this version everywhere (pinned unless it is the newest)")
def activate(version: str, request: Request) -> dict:
    active = request.app.state.active
    previous, _ = active.store.active()
    result = active.store.activate(version)
    active.refresh()  # this process switches now; the others within reload_s
    return {"model": active.model_name, "active": result["version"], "pinned": result["pinned"],
            "previous": previous}
