"""Assembles the inference app: clients built at startup, routers, error bodies; closed in order at shutdown.

`create_app(settings)` is all uvicorn (or a test) needs. Shutdown flushes the prediction log last, after
uvicorn has finished the requests in flight, so every answered prediction gets its log record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from schemas.errors import ModelError, ModelNotFoundError, StreammlError
from schemas.registry import RegistryClient
from services.inference import metrics
from services.inference.active import ActiveState
from services.inference.auth import KeyRing
from services.inference.fastpath import PredictFastPath, validation_body
from services.inference.online import OnlineFeatures
from services.inference.prediction_log import PredictionLogger
from services.inference.predictor import Predictor
from services.inference.routes import health, models, predict
from services.inference.settings import InferenceSettings
from streams.runtime.lifecycle import tune_gc
from streams.runtime.logging import get_logger

log = get_logger("inference")


def create_app(settings: InferenceSettings) -> PredictFastPath:
    """The inference API configured by `settings` behind the predict fast path (which, turned off, still
    enforces the key, JSON and body-size limits); clients start with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        active = ActiveState(settings.redis_url, settings.model_name, settings.inference_reload_s)
        active.start()
        features = OnlineFeatures(
            settings.redis_url, lambda: active.namespace_prefix, timeout_ms=settings.inference_redis_timeout_ms,
            retry_s=settings.inference_redis_retry_s, cache_ttl_ms=settings.inference_cache_ttl_ms,
            cache_size=settings.inference_cache_size)
        prediction_log = PredictionLogger(settings, RegistryClient.shared(settings.schema_registry_url),
                                          capacity=settings.inference_log_buffer,
                                          delivery_timeout_ms=settings.inference_log_delivery_timeout_ms)
        await prediction_log.start()
        app.state.active, app.state.features, app.state.prediction_log = active, features, prediction_log
        app.state.predictor = Predictor(settings.model_name, settings.model_prior, features, active, prediction_log)
        tune_gc(settings.inference_gc_thresholds)  # a full collection would otherwise pause a request ~10 ms+
        log.info("inference ready", model=settings.model_name, version=active.served.version,
                 namespace=active.namespace, auth="on" if settings.inference_auth else "OFF (local use)")
        try:
            yield
        finally:
            undelivered = await prediction_log.close()
            active.stop()
            await features.close()
            log.info("inference stopped", undelivered_predictions=undelivered)

    app = FastAPI(title="streamml inference", version="1", lifespan=lifespan,
                  description="Scores (user, item) pairs with online River models over fresh streaming features.")
    app.state.keys = KeyRing(settings.inference_auth, settings.api_keys, settings.admin_keys)
    app.state.batch_max = settings.inference_batch_max
    for module in (predict, models, health):
        app.include_router(module.router)
    _install_error_handlers(app)
    return PredictFastPath(app, serve=settings.inference_fast_path)


def _endpoint(request: Request) -> str:
    path = request.url.path
    return "batch" if path.endswith("/batch") else "predict" if path.endswith("/predict") else "other"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.REQUESTS.labels(_endpoint(request), "422").inc()
        return JSONResponse(validation_body(list(exc.errors())), status_code=422)

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> JSONResponse:
        metrics.REQUESTS.labels(_endpoint(request), str(exc.status_code)).inc()
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ModelError)
    async def model_error(request: Request, exc: ModelError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404 if isinstance(exc, ModelNotFoundError) else 409)

    @app.exception_handler(StreammlError)
    async def streamml_error(request: Request, exc: StreammlError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.exception_handler(redis.RedisError)
    async def store_unavailable(request: Request, exc: redis.RedisError) -> JSONResponse:
        # the model routes read the model store directly; predict never gets here (it degrades instead)
        return JSONResponse({"error": f"the model store (Redis) is unavailable ({type(exc).__name__}); retry"},
                            status_code=503)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", method=request.method, path=request.url.path)
        metrics.REQUESTS.labels(_endpoint(request), "500").inc()
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the inference log"},
                            status_code=500)
