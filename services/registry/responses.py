"""How the registry talks HTTP: Confluent's media type, its error body, and JSON for clients that ask for it.

Confluent clients send and accept `application/vnd.schemaregistry.v1+json`; curl users get plain JSON on request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


class ErrorBody(BaseModel):
    """Confluent's error body: clients branch on `error_code` (e.g. 40401 subject not found)."""

    error_code: int
    message: str


_REFUSALS = {
    400: "The body cannot be read as JSON text (not UTF-8).",
    401: "No admin key (X-API-Key or the basic-auth password) on a change, when the registry has admin keys.",
    403: "The key is not one of the registry's admin keys.",
    404: "Subject, version or schema not found (or soft-deleted), per `error_code`; on a `{subject}` path also "
         "a subject name with a line break (no route carries one).",
    409: "The schema is incompatible with the subject's versions under its compatibility level.",
    422: "Invalid schema, version, compatibility level or request (`error_code` 42201/42202/42203/422).",
    503: "The registry's database does not answer.",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error statuses, all with Confluent's `ErrorBody`."""
    return {code: {"model": ErrorBody, "description": _REFUSALS[code]} for code in codes}


METRICS_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}


class RegistryJSONResponse(JSONResponse):
    media_type = MEDIA_TYPE


def error_response(status: int, error_code: int, message: str) -> RegistryJSONResponse:
    """Confluent's error body; clients read `error_code` and `message` from it."""
    return RegistryJSONResponse({"error_code": error_code, "message": message}, status_code=status)


def raw_schema(text: str) -> Response:
    """The `/schema` variants answer with the schema itself, not wrapped in an object."""
    return Response(content=text, media_type=MEDIA_TYPE)


def wants_plain_json(accept: str) -> bool:
    """True when the client lists application/json but none of the schema-registry media types."""
    return "application/json" in accept and "schemaregistry" not in accept


async def negotiate_content_type(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Middleware: relabel our JSON as `application/json` for clients that only accept that."""
    response = await call_next(request)
    if wants_plain_json(request.headers.get("accept", "")) and response.headers.get("content-type") == MEDIA_TYPE:
        response.headers["content-type"] = "application/json"
    return response
