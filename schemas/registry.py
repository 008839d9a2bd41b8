"""Schema-registry access for any Confluent-compatible registry (ours, Confluent's, Apicurio's).

Wraps confluent-kafka's `SchemaRegistryClient` (which caches ids and schemas) and turns its errors
into `RegistryError`/`IncompatibleSchemaError` with a next step for the user.
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from schemas.errors import IncompatibleSchemaError, RegistryError
from schemas.topics import TOPICS, TopicSpec

_NOT_FOUND_CODES = {40401, 40402, 40403}


class RegistryClient:
    """Registers and looks up Avro schemas; one instance per process, shared by all serdes (`shared`)."""

    _shared: dict[str, RegistryClient] = {}

    @classmethod
    def shared(cls, url: str) -> RegistryClient:
        """The process-wide client for `url` (building one costs an SSL context and a cache)."""
        client = cls._shared.get(url)
        if client is None:
            client = cls._shared[url] = cls(url)
        return client

    def __init__(self, url: str, conf: dict[str, Any] | None = None):
        self.url = url
        try:
            self._client = SchemaRegistryClient({"url": url, **(conf or {})})
        except Exception as exc:
            raise RegistryError(f"invalid schema registry settings for {url}: {exc}") from exc

    def register(self, subject: str, schema: dict[str, Any] | str) -> int:
        """Register (or find) `schema` under `subject`; returns its global id."""
        text = schema if isinstance(schema, str) else json.dumps(schema, separators=(",", ":"))
        try:
            return self._client.register_schema(subject, Schema(text, "AVRO"))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409:
                raise IncompatibleSchemaError(subject, [exc.error_message]) from exc
            raise RegistryError(self._explain(f"register {subject}", exc)) from exc
        except Exception as exc:
            raise RegistryError(self._unreachable(exc)) from exc

    def schema_by_id(self, schema_id: int) -> str | None:
        """The schema text for a global id, or None when the registry does not know it."""
        try:
            return self._client.get_schema(schema_id).schema_str
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 or exc.error_code in _NOT_FOUND_CODES:
                return None
            raise RegistryError(self._explain(f"look up schema id {schema_id}", exc)) from exc
        except Exception as exc:
            raise RegistryError(self._unreachable(exc)) from exc

    def latest(self, subject: str) -> tuple[int, int, str] | None:
        """(id, version, schema text) of the latest version of `subject`, or None."""
        try:
            reg = self._client.get_latest_version(subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise RegistryError(self._explain(f"read latest of {subject}", exc)) from exc
        except Exception as exc:
            raise RegistryError(self._unreachable(exc)) from exc
        return reg.schema_id, reg.version, reg.schema.schema_str

    def is_compatible(self, subject: str, schema: dict[str, Any] | str) -> bool:
        text = schema if isinstance(schema, str) else json.dumps(schema)
        try:
            return self._client.test_compatibility(subject, Schema(text, "AVRO"))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return True
            raise RegistryError(self._explain(f"check compatibility of {subject}", exc)) from exc
        except Exception as exc:
            raise RegistryError(self._unreachable(exc)) from exc

    def register_contract(self, topics: tuple[TopicSpec, ...] = TOPICS) -> dict[str, int]:
        """Register every contract schema; returns subject -> id. Idempotent."""
        return {t.subject: self.register(t.subject, t.schema) for t in topics}

    def _explain(self, what: str, exc: SchemaRegistryError) -> str:
        return f"schema registry at {self.url} refused to {what}: HTTP {exc.http_status_code} {exc.error_message}"

    def _unreachable(self, exc: Exception) -> str:
        return (
            f"schema registry at {self.url} is unreachable ({type(exc).__name__}: {exc}); "
            "start it with `streamml up` or set STREAMML_SCHEMA_REGISTRY_URL"
        )
