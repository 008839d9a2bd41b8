"""Avro bodies in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body.

Pure: no network. Timestamps stay epoch milliseconds (ints) in process; logical types are only
annotations on the wire, so decoding skips fastavro's datetime conversion (and its cost).
"""

from __future__ import annotations

import io
import struct
from copy import deepcopy
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.validation import validate

from schemas.encoder import Unsupported, Write, compile_schema
from schemas.errors import DecodeError, SchemaError

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")
HEADER_SIZE = _HEADER.size


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header."""
    return _HEADER.pack(MAGIC_BYTE, schema_id) + body


def split_frame(data: bytes | None) -> tuple[int, memoryview]:
    """Split a Confluent-framed payload into (schema id, Avro body); `DecodeError` if not framed."""
    if data is None:
        raise DecodeError("empty", "record has no value (tombstone) where an Avro value is required")
    if len(data) < HEADER_SIZE + 1:
        raise DecodeError("truncated", f"{len(data)} bytes is shorter than the 5-byte header plus a body")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise DecodeError("bad_magic", f"first byte is {magic}, expected {MAGIC_BYTE} (Confluent wire format)")
    return schema_id, memoryview(data)[HEADER_SIZE:]


def strip_logical_types(schema: Any) -> Any:
    """A copy of `schema` without `logicalType` annotations (same bytes on the wire, plain values in process)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            node.pop("logicalType", None)
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)
        return node

    return strip(deepcopy(schema))


def fingerprint(schema: Any) -> str:
    """Identity of a schema for reuse decisions: its Parsing Canonical Form's SHA-256."""
    from fastavro.schema import fingerprint as _fp
    from fastavro.schema import to_parsing_canonical_form

    return _fp(to_parsing_canonical_form(schema), "SHA-256")


class AvroCodec:
    """Encodes records with one schema and decodes bodies written with it or with an older version."""

    def __init__(self, schema: dict[str, Any] | str | list[Any]):
        import json

        raw = json.loads(schema) if isinstance(schema, str) else schema
        self.schema = raw
        # Keep fastavro's "already parsed" hint: without it every read re-parses the schema (3x slower).
        self._parsed = parse_schema(strip_logical_types(raw))
        self._name = raw.get("name", "?") if isinstance(raw, dict) else "?"
        self.fingerprint = fingerprint(raw)
        try:
            self._fast: Write | None = compile_schema(strip_logical_types(raw))
        except Unsupported:
            self._fast = None  # fastavro writes every record

    def encode(self, record: dict[str, Any]) -> bytes:
        """The Avro body of `record`; `SchemaError` naming the bad field when it does not fit the schema."""
        if self._fast is not None:
            parts: list[bytes] = []
            try:
                self._fast(parts, record)
                return b"".join(parts)
            except Exception:  # noqa: BLE001, S110 - Unsupported or an odd value: fastavro writes it or says why
                pass
        out = io.BytesIO()
        try:
            schemaless_writer(out, self._parsed, record)
        except Exception as exc:  # fastavro raises ValueError/TypeError/KeyError/AttributeError
            detail = str(exc)
            try:
                validate(record, self._parsed, raise_errors=True)
            except Exception as verr:  # the validator names the field path
                detail = str(verr)
            raise SchemaError(f"record does not match schema {self._name}: {detail}") from exc
        return out.getvalue()

    def decode(self, body: bytes | memoryview, writer: AvroCodec | None = None) -> dict[str, Any]:
        """Decode a body written with `writer`'s schema (default: this one), resolved to this schema."""
        stream = io.BytesIO(body)
        try:
            if writer is None or writer is self:
                record = schemaless_reader(stream, self._parsed, None)
            else:
                record = schemaless_reader(stream, writer._parsed, self._parsed)
        except Exception as exc:  # EOFError, StopIteration, UnicodeDecodeError, IndexError, SchemaResolutionError…
            raise DecodeError("invalid_avro", f"{type(exc).__name__}: {exc}") from exc
        extra = len(body) - stream.tell()
        if extra:  # a record is exactly its encoding: more bytes mean a corrupt frame or the wrong schema
            raise DecodeError("invalid_avro", f"{extra} bytes left after the record (wrong schema id or corrupt)")
        return record
