"""Many Avro bodies of one writer schema decoded at once into an Arrow record batch. Pure: no I/O.

fastavro decodes ~50k prediction records/s here, one Python dict each: the drift job's ceiling.
arrow-avro (Rust, through polars-avro's reader) decodes the same records at ~500k+/s into columns,
given an Avro object container: our bodies concatenated into one block behind a header.

The block claims far more records (`_SLACK`) than it holds, and the reader is asked for exactly as
many rows as bodies: a reader that has read the claimed count with bytes left in the block spins
forever (seen with arrow-avro here, for a body with trailing bytes), while one that runs out of bytes
stops with an error. Every contract schema encodes a record in at least one byte, so the claim is
never reached. A block is only delimited as a whole, so a corrupt body could shift where its
neighbours are read from. To return nothing but what a one-by-one decode would, the batch is accepted only if every
decoded row re-encodes (by size, computed from the columns) to exactly its own body's length:
then every row was read from exactly its own bytes. Anything else (a decode error, a size mismatch,
a type the size rule does not cover) returns None, and the caller decodes one by one, which names
the bad records.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.codec import strip_logical_types
from schemas.encoder import zigzag_varint

_PRIMITIVE_FIXED = {"null": 0, "boolean": 1, "float": 4, "double": 8}
_SLACK = 1 << 31  # records the block claims beyond the bodies (see the module docstring)
_VARINT_STEPS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


class BulkUnsupported(Exception):
    """The writer schema holds a type the size check does not cover: decode one by one."""


def _varint_size(values: np.ndarray) -> np.ndarray:
    """Bytes of the zig-zag varint encoding of each (signed) integer."""
    v = values.astype(np.int64)
    zz = (v.view(np.uint64) << np.uint64(1)) ^ (v >> 63).view(np.uint64)
    size = np.ones(len(zz), dtype=np.int64)
    for step in _VARINT_STEPS:
        size += zz >= step
    return size


def _block_sizes(counts: np.ndarray, item_sizes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Size of each array/map: one block (count, items) if not empty, then the 0 that ends it."""
    cumulative = np.concatenate(([0], np.cumsum(item_sizes, dtype=np.int64)))
    body = cumulative[offsets[1:]] - cumulative[offsets[:-1]]
    return np.where(counts > 0, _varint_size(counts) + body, 0) + 1


def _check(schema: Any, named: dict[str, Any]) -> int:
    """The fewest bytes a value of `schema` encodes to; BulkUnsupported unless every type in it has a
    size rule below."""
    if isinstance(schema, str):
        if schema in named:
            return named[schema]
        if schema not in (*_PRIMITIVE_FIXED, "int", "long", "string", "bytes"):
            raise BulkUnsupported(f"type {schema}")
        return _PRIMITIVE_FIXED.get(schema, 1)
    if isinstance(schema, list):
        return 1 + min(_check(branch, named) for branch in schema)
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = 0  # a recursive reference: at least nothing
        least = sum(_check(field["type"], named) for field in schema["fields"])
    elif kind in ("map", "array"):
        _check(schema["values" if kind == "map" else "items"], named)
        return 1
    elif kind == "enum":
        least = 1
    elif kind == "fixed":
        least = schema["size"]
    else:
        return _check(kind, named)
    named[schema["name"]] = least
    if "namespace" in schema:
        named[f"{schema['namespace']}.{schema['name']}"] = least
    return least


def encoded_sizes(schema: Any, array: pa.Array, named: dict[str, Any] | None = None) -> np.ndarray:
    """Bytes each element of `array` takes in Avro binary with `schema` (one block per map or array)."""
    named = {} if named is None else named
    if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
        named.setdefault(schema["name"], schema)
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        return _union_sizes(schema, array, named)
    kind = schema if isinstance(schema, str) else schema["type"]
    n = len(array)
    if kind in _PRIMITIVE_FIXED:
        return np.full(n, _PRIMITIVE_FIXED[kind], dtype=np.int64)
    if kind in ("int", "long"):
        return _varint_size(array.fill_null(0).to_numpy(zero_copy_only=False))
    if kind in ("string", "bytes"):
        lengths = pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return _varint_size(lengths) + lengths
    if kind == "fixed":
        return np.full(n, schema["size"], dtype=np.int64)
    if kind == "enum":
        indices = array.indices if isinstance(array, pa.DictionaryArray) else None
        if indices is None:
            raise BulkUnsupported(f"enum decoded as {array.type}")
        return _varint_size(indices.fill_null(0).to_numpy(zero_copy_only=False))
    if kind == "record":
        total = np.zeros(n, dtype=np.int64)
        for i, field in enumerate(schema["fields"]):
            total += encoded_sizes(field["type"], array.field(i), named)
        return total
    if kind in ("map", "array"):
        offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        if kind == "map":
            _refuse_repeated_keys(array.keys, offsets)
            items = encoded_sizes("string", array.keys, named) + encoded_sizes(schema["values"], array.items, named)
        else:
            items = encoded_sizes(schema["items"], array.values, named)
        return _block_sizes(np.diff(offsets), items, offsets)
    raise BulkUnsupported(f"type {kind}")


def _refuse_repeated_keys(keys: pa.Array, offsets: np.ndarray) -> None:
    """A map holding a key twice is well-formed Avro, but one-by-one decoding keeps only its last value
    while the columns keep both: such a batch is decoded one by one."""
    if not len(keys):
        return
    codes = pc.dictionary_encode(keys).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    if len(np.unique(rows * (int(codes.max()) + 1) + codes)) != len(codes):
        raise BulkUnsupported("a map holds a key twice")


def _union_sizes(branches: list[Any], array: pa.Array, named: dict[str, Any]) -> np.ndarray:
    if isinstance(array, pa.UnionArray):
        codes = array.type_codes.to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        sizes = _varint_size(codes)
        for child, code in enumerate(array.type.type_codes):
            at = codes == code
            if at.any():
                sizes[at] += encoded_sizes(branches[code], array.field(child), named)[offsets[at]]
        return sizes
    # ["null", T] comes back as a nullable T: arrow-avro reads any branch index but null's as T (a
    # corrupt index would pass unseen), so such schemas are decoded one by one
    raise BulkUnsupported(f"union {branches} decoded as {array.type}")


class BulkDecoder:
    """Decodes lists of bodies written with one schema into a `pa.RecordBatch` (None: decode one by one)."""

    def __init__(self, writer_schema: dict[str, Any] | str):
        raw = json.loads(writer_schema) if isinstance(writer_schema, str) else writer_schema
        self.schema = strip_logical_types(raw)
        if _check(self.schema, {}) < 1:
            raise BulkUnsupported("a record of this schema can encode to no bytes at all")
        from polars_avro._avro_rs import AvroSource  # Rust (arrow-avro); imports polars, ~0.4 s once

        self._source = AvroSource
        self._sync = os.urandom(16)
        meta = {b"avro.schema": json.dumps(self.schema).encode(), b"avro.codec": b"null"}
        header = bytearray(b"Obj\x01") + zigzag_varint(len(meta))
        for key, value in meta.items():
            header += zigzag_varint(len(key)) + key + zigzag_varint(len(value)) + value
        self._header = bytes(header + zigzag_varint(0) + self._sync)

    def decode(self, bodies: Sequence[bytes | memoryview]) -> pa.RecordBatch | None:
        """All `bodies` as one record batch, or None when the batch must be decoded one by one."""
        if not bodies:
            return None
        lengths = np.fromiter((len(b) for b in bodies), dtype=np.int64, count=len(bodies))
        data = b"".join(bodies)
        container = b"".join((self._header, zigzag_varint(len(bodies) + _SLACK), zigzag_varint(len(data)), data,
                              self._sync))
        try:
            source = self._source([lambda: contextlib.nullcontext(io.BytesIO(container))], True, False)
            batches = [pa.record_batch(b) for b in source.batch_iter(len(bodies), None)]
        except BaseException as exc:  # noqa: BLE001 - AvroError, a Rust panic (PanicException is a BaseException)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return None
        if len(batches) != 1 or batches[0].num_rows != len(bodies):
            return None
        batch = batches[0]
        try:
            sizes = encoded_sizes(self.schema, pa.StructArray.from_arrays(batch.columns, names=batch.schema.names))
        except BulkUnsupported:
            return None
        return batch if np.array_equal(sizes, lengths) else None
