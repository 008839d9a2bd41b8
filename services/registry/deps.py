"""What route handlers get injected: the store, the admin-key guard, and parsed path and body values.

Writes are guarded only when admin keys are configured, so a local registry stays zero-setup.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from schemas.compatibility import LEVELS
from services.registry import errors
from services.registry.errors import RegistryRequestError
from services.registry.store import LATEST, SchemaStore, Version

_MAX_VERSION = 2**31 - 1


def get_store(request: Request) -> SchemaStore:
    return request.app.state.store


Store = Annotated[SchemaStore, Depends(get_store)]


def require_admin(request: Request) -> None:
    """Refuse a change unless it carries an admin key (X-API-Key, or the password of HTTP basic auth).

    Basic auth is accepted because confluent-kafka's client can send it (`basic.auth.user.info`)
    but cannot add arbitrary headers.
    """
    keys: frozenset[str] = request.app.state.admin_keys
    if not keys:
        return
    presented = request.headers.get("x-api-key") or _basic_password(request.headers.get("authorization", ""))
    if not presented:
        raise RegistryRequestError(
            401, 40101, "this registry needs an admin API key for changes: send it in the X-API-Key header "
            "(or as the basic-auth password)"
        )
    if not any(hmac.compare_digest(presented.encode(), key.encode()) for key in keys):
        raise RegistryRequestError(
            403, 40301, "the API key is not one of this registry's admin keys (STREAMML_REGISTRY_ADMIN_KEYS)"
        )


def _basic_password(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode().partition(":")[2] or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def parse_version(text: str) -> Version:
    """A path version: "latest" (or -1, as Confluent allows) or 1..2^31-1."""
    if text == LATEST or text == "-1":
        return LATEST
    try:
        number = int(text)
    except ValueError:
        raise errors.invalid_version(text) from None
    if not 1 <= number <= _MAX_VERSION:
        raise errors.invalid_version(text)
    return number


def page(items: list[Any], offset: int, limit: int) -> list[Any]:
    """Confluent-style pagination: `limit` < 0 means everything after `offset`."""
    items = items[max(offset, 0):]
    return items if limit < 0 else items[:limit]


class SchemaBody(BaseModel):
    """Body of register, lookup and compatibility calls: `{"schema": "...", "schemaType": "AVRO"}`."""

    model_config = ConfigDict(extra="ignore")  # metadata, ruleSet: accepted, not stored

    schema_text: str | dict[str, Any] | list[Any] = Field(alias="schema")
    schema_type: str | None = Field(None, alias="schemaType")
    references: list[dict[str, Any]] | None = None

    def avro(self) -> str | dict[str, Any] | list[Any]:
        """The Avro schema; other schema types and references are refused with what to do instead."""
        kind = (self.schema_type or "AVRO").upper()
        if kind != "AVRO":
            raise errors.invalid_schema(
                f"schemaType {self.schema_type!r} is not supported: this registry stores AVRO schemas only; "
                "send an Avro schema, or use a Confluent Schema Registry for JSON Schema/Protobuf"
            )
        if self.references:
            raise errors.invalid_schema(
                "schema references are not supported by this registry; define the referenced types inline"
            )
        return self.schema_text


class ConfigBody(BaseModel):
    """Body of PUT /config: `{"compatibility": "FULL"}` (`compatibilityLevel` also accepted)."""

    model_config = ConfigDict(extra="ignore")

    compatibility: str | None = None
    compatibility_level: str | None = Field(None, alias="compatibilityLevel")

    def level(self) -> str:
        level = self.compatibility or self.compatibility_level
        if not level:
            raise errors.invalid_compatibility_level(
                f'send {{"compatibility": "<level>"}} with one of {", ".join(LEVELS)}'
            )
        return level
