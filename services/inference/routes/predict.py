"""`POST /v1/predict` and `POST /v1/predict/batch`."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.responses import Response

from services.inference import metrics
from services.inference.auth import require_predict
from services.inference.contracts import PredictRequest, PredictResponse, refusals
from services.inference.fastpath import scored

# 401/413/415 come from PredictFastPath, in front of these routes whether or not it serves them
router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Depends(require_predict)],
                   responses=refusals(401, 413, 415, 422))


def _json(payload: object) -> Response:
    # orjson straight to bytes: the response models document the shape without a second validation pass
    return Response(orjson.dumps(payload), media_type="application/json")


@router.post("/predict", response_model=PredictResponse, summary="Score one (user, item) pair")
async def predict(body: PredictRequest, request: Request) -> Response:
    started = time.perf_counter()
    [result] = await request.app.state.predictor.predict([scored(body)])
    metrics.LATENCY.labels("predict").observe(time.perf_counter() - started)
    metrics.REQUESTS.labels("predict", "200").inc()
    return _json(result)


@router.post("/predict/batch", response_model=list[PredictResponse],
             summary="Score up to inference_batch_max pairs in one Redis round trip")
async def predict_batch(request: Request,
                        body: Annotated[list[PredictRequest], Body(min_length=1, max_length=10_000)]) -> Response:
    started = time.perf_counter()
    limit = request.app.state.batch_max
    if len(body) > limit:
        raise HTTPException(422, f"body: a batch holds 1 to {limit} requests, got {len(body)}")
    results = await request.app.state.predictor.predict([scored(b) for b in body])
    metrics.LATENCY.labels("batch").observe(time.perf_counter() - started)
    metrics.REQUESTS.labels("batch", "200").inc()
    return _json(results)
