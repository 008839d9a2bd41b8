"""The HTTP contract of the inference service: request and response bodies (OpenAPI is generated from these).

The `context` model is generated from the request-time features of the one feature list, so a new
request feature is typed, validated and documented here without being restated.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from streams.features.definitions import REQUEST_FEATURES

_ID = Field(..., min_length=1, max_length=256, description="Entity id as in the events (no surrounding spaces).")
_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str}
# Strict: `true` or "3" is not an integer (the schema says so). Numbers are logged as Avro doubles, so ints are
# bounded to those a double holds exactly and floats are finite: anything else could be served but never logged.
_EXACT = 2**53
_BOUNDS: dict[str, dict[str, Any]] = {"int": {"ge": -_EXACT, "le": _EXACT}, "float": {"allow_inf_nan": False},
                                      "str": {}}

Context = create_model(  # type: ignore[call-overload]
    "Context",
    __config__=ConfigDict(extra="allow"),
    __doc__="Request-time facts; the typed fields feed request features, others are ignored by the model.",
    **{f.context_field: (_TYPES[f.dtype] | None, Field(None, description=f.doc, strict=True, **_BOUNDS[f.dtype]))
       for f in REQUEST_FEATURES if f.context_field},
)


class PredictRequest(BaseModel):
    """Score one (user, item) pair."""

    model_config = ConfigDict(extra="forbid")
    user_id: str = _ID
    item_id: str = _ID
    context: Context = Field(default_factory=Context)  # type: ignore[valid-type]


class PredictResponse(BaseModel):
    prediction_id: str = Field(..., description="Key of the logged prediction; labels refer to it.")
    score: float = Field(..., description="P(purchase) from the served model (the prior on cold start).")
    model: str
    model_version: str = Field(..., description="Snapshot that scored it; `prior` before any exists.")
    feature_age_ms: float | None = Field(..., description="Now minus the event time of the stalest entity's "
                                                          "features; null when no entity has features.")
    degraded: list[str] = Field(..., description="Why the answer is less than normal: features_unavailable, "
                                                 "cold_start, model_error. Empty when all is well.")
    latency_ms: float = Field(..., description="Server time spent on this prediction.")


class ModelVersionInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: str
    created_ms: int
    labels_learned: int = 0
    pruned: bool = False


class ModelsResponse(BaseModel):
    model: str
    active: str | None = Field(..., description="Version every serving process loads (null = cold start).")
    pinned: bool = Field(..., description="True after a rollback: the learner stops auto-activating.")
    serving: str | None = Field(..., description="Version this process serves now (converges within reload_s).")
    versions: list[ModelVersionInfo]


class ActivateResponse(BaseModel):
    model: str
    active: str
    pinned: bool
    previous: str | None


class FieldError(BaseModel):
    field: str = Field(..., description="Where: `body.context.position`, `body.0.user_id`, `body`.")
    message: str
    type: str = Field(..., description="Machine-readable reason (pydantic's error type).")


class ErrorResponse(BaseModel):
    """Every refusal: a sentence to read, and on 422 the bad fields one by one."""

    error: str
    detail: list[FieldError] | None = Field(None, description="422 only: each bad field.")


_REFUSALS = {
    401: "Missing or unknown X-API-Key.",
    403: "The key may predict but not change models (use an admin key).",
    404: "No such model version.",
    409: "The version cannot be served (its weights were pruned).",
    413: "Request body larger than the limit (64 KiB for one prediction, 4 MiB for a batch).",
    415: "The body is not `application/json`.",
    422: "Invalid request: each bad field is named; a batch above inference_batch_max is refused here.",
    503: "A dependency (the model store in Redis) is unavailable; retry.",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error statuses, all with `ErrorResponse` bodies."""
    return {code: {"model": ErrorResponse, "description": _REFUSALS[code]} for code in codes}
