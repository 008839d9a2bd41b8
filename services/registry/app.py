"""Assembles the registry's FastAPI app: routers, Confluent-style error bodies, metrics and media types.

`create_app(store)` is all a server or a test needs; the store is opened and closed by the caller.
"""

from __future__ import annotations

from collections.abc import Collection

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from schemas.errors import IncompatibleSchemaError, SchemaError
from services.registry.errors import RegistryRequestError
from services.registry.metrics import count_requests
from services.registry.responses import RegistryJSONResponse, error_response, negotiate_content_type
from services.registry.routes import compatibility, config, ops, schemas, subjects
from services.registry.store import SchemaStore
from streams.runtime.logging import get_logger

log = get_logger("registry")


def create_app(store: SchemaStore, *, admin_keys: Collection[str] = ()) -> FastAPI:
    """The registry API over `store`; with `admin_keys`, changes need one of them (X-API-Key)."""
    app = FastAPI(title="streamml schema registry", default_response_class=RegistryJSONResponse)
    app.state.store = store
    app.state.admin_keys = frozenset(admin_keys)
    for module in (subjects, schemas, compatibility, config, ops):
        app.include_router(module.router)
    app.middleware("http")(negotiate_content_type)
    app.middleware("http")(count_requests)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RegistryRequestError)
    async def refused(request: Request, exc: RegistryRequestError) -> RegistryJSONResponse:
        return error_response(exc.status, exc.error_code, exc.message)

    @app.exception_handler(IncompatibleSchemaError)
    async def incompatible(request: Request, exc: IncompatibleSchemaError) -> RegistryJSONResponse:
        return error_response(409, 409, str(exc))

    @app.exception_handler(SchemaError)
    async def invalid(request: Request, exc: SchemaError) -> RegistryJSONResponse:
        return error_response(422, 42201, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> RegistryJSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        hint = ' (a schema goes in as {"schema": "<Avro schema as a JSON string>"})' if "schema" in details else ""
        return error_response(422, 422, f"invalid request: {details}{hint}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> RegistryJSONResponse:
        return error_response(exc.status_code, exc.status_code, f"HTTP {exc.status_code} {exc.detail}")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> RegistryJSONResponse:
        log.exception("registry request failed", method=request.method, path=request.url.path)
        return error_response(500, 50001, f"registry internal error ({type(exc).__name__}); see the registry log")
