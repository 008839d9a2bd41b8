"""How the registry talks HTTP: Confluent's media type, its error body, and JSON for clients that ask for it.

Confluent clients send and accept `application/vnd.schemaregistry.v1+json`; curl users get plain JSON on request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.responses import JSONResponse

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


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
