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

A ["null", T] or [T, "null"] union comes back as a nullable T, and arrow-avro does not check its branch
index (it reads ["null", T] with any index but 0 as T), so a corrupt index (2, -1) would pass the size
check unseen. But that check also shows every value was read from its shortest encoding at the place
the columns imply, so each such union's index is the one byte at a position known from the sizes of
the fields before it: the batch is accepted only if that byte is the index of the branch the column
took (0x00 or 0x02), so arrow-avro read exactly what fastavro does. Where that position is not
tracked (in an array, a map or another union) a nullable union is refused.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.codec import strip_logical_types
from schemas.encoder import zigzag_varint

_PRIMITIVE_FIXED = {"null": 0, "boolean": 1, "float": 4, "double": 8}
_SLACK = 1 << 31  # records the block claims beyond the bodies (see the module docstring)
_VARINT_STEPS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)
_BRANCH_BYTES = np.frombuffer(zigzag_varint(0) + zigzag_varint(1), dtype=np.uint8)  # branch index 0, 1

# Per nullable union: where its branch index is in each row (-1: not in that row's bytes) and the byte it must be.
Checks = list[tuple[np.ndarray, np.ndarray]]


class BulkUnsupported(Exception):
    """The writer schema holds a type the size check does not cover: decode one by one."""


def _varint_size(values: np.ndarray) -> np.ndarray:
    """Bytes of the zig-zag varint encoding of each (signed) integer: 1 + the 7-bit steps it reaches."""
    v = values.astype(np.int64)
    zz = (v.view(np.uint64) << np.uint64(1)) ^ (v >> 63).view(np.uint64)
    return np.searchsorted(_VARINT_STEPS, zz, side="right").astype(np.int64) + 1


def _numbers(array: pa.Array) -> np.ndarray:
    """The array's values as numpy, nulls as 0 (a null takes no bytes of its own)."""
    return (array.fill_null(0) if array.null_count else array).to_numpy(zero_copy_only=False)


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


def encoded_sizes(schema: Any, array: pa.Array, named: dict[str, Any] | None = None, start: np.ndarray | None = None,
                  checks: Checks | None = None) -> np.ndarray:
    """Bytes each element of `array` takes in Avro binary with `schema` (one block per map or array).

    Given `checks`, the branch index of every nullable union is added to it, located by `start`: where
    each element begins in its row (-1: not in the row), None where that is not tracked."""
    named = {} if named is None else named
    if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
        named.setdefault(schema["name"], schema)
        if "namespace" in schema:
            named.setdefault(f"{schema['namespace']}.{schema['name']}", schema)
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        return _union_sizes(schema, array, named, start, checks)
    kind = schema if isinstance(schema, str) else schema["type"]
    n = len(array)
    if kind in _PRIMITIVE_FIXED:
        return np.full(n, _PRIMITIVE_FIXED[kind], dtype=np.int64)
    if kind in ("int", "long"):
        return _varint_size(_numbers(array))
    if kind in ("string", "bytes"):
        lengths = _numbers(pc.binary_length(array)).astype(np.int64)
        return _varint_size(lengths) + lengths
    if kind == "fixed":
        return np.full(n, schema["size"], dtype=np.int64)
    if kind == "enum":
        indices = array.indices if isinstance(array, pa.DictionaryArray) else None
        if indices is None:
            raise BulkUnsupported(f"enum decoded as {array.type}")
        return _varint_size(_numbers(indices))
    if kind == "record":
        total = np.zeros(n, dtype=np.int64)
        for i, field in enumerate(schema["fields"]):
            at = None if start is None else np.where(start >= 0, start + total, -1)
            total += encoded_sizes(field["type"], array.field(i), named, at, checks)
        return total
    if kind in ("map", "array"):
        offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        if kind == "map":
            _refuse_repeated_keys(array.keys, offsets)
            items = encoded_sizes("string", array.keys, named) + encoded_sizes(schema["values"], array.items, named,
                                                                                None, checks)
        else:
            items = encoded_sizes(schema["items"], array.values, named, None, checks)
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


def _union_sizes(branches: list[Any], array: pa.Array, named: dict[str, Any], start: np.ndarray | None,
                 checks: Checks | None) -> np.ndarray:
    if isinstance(array, pa.UnionArray):
        codes = array.type_codes.to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        sizes = _varint_size(codes)
        for child, code in enumerate(array.type.type_codes):
            at = codes == code
            if at.any():
                sizes[at] += encoded_sizes(branches[code], array.field(child), named, None, checks)[offsets[at]]
        return sizes
    if len(branches) != 2 or "null" not in branches:
        raise BulkUnsupported(f"union {branches} decoded as {array.type}")
    null = branches.index("null")
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    inner = None
    if checks is not None:  # see the module docstring: arrow-avro does not check this union's branch index
        if start is None:
            raise BulkUnsupported(f"union {branches} inside an array, map or union")
        checks.append((start, _BRANCH_BYTES[np.where(valid, 1 - null, null)]))
        inner = np.where(valid & (start >= 0), start + 1, -1)
    return 1 + np.where(valid, encoded_sizes(branches[1 - null], array, named, inner, checks), 0)


def _branch_indices_hold(data: bytes, lengths: np.ndarray, checks: Checks) -> bool:
    """Whether each nullable union's branch index in `data` (the bodies joined) is the branch its column took."""
    if not checks:
        return True
    row_starts = np.tile(np.cumsum(lengths) - lengths, len(checks))
    where = np.concatenate([at for at, _ in checks])
    expected = np.concatenate([byte for _, byte in checks])
    present = where >= 0
    return np.array_equal(np.frombuffer(data, dtype=np.uint8)[(row_starts + where)[present]], expected[present])


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
        lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
        data = b"".join(bodies)
        container = b"".join((self._header, zigzag_varint(len(bodies) + _SLACK), zigzag_varint(len(data)), data,
                              self._sync))
        try:  # not strict: strict mode refuses [T, "null"] unions (their branch index is checked here too)
            source = self._source([lambda: contextlib.nullcontext(io.BytesIO(container))], False, False)
            batches = [pa.record_batch(b) for b in source.batch_iter(len(bodies), None)]
        except BaseException as exc:  # noqa: BLE001 - AvroError, a Rust panic (PanicException is a BaseException)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return None
        if len(batches) != 1 or batches[0].num_rows != len(bodies):
            return None
        batch = batches[0]
        checks: Checks = []
        try:
            sizes = encoded_sizes(self.schema, pa.StructArray.from_arrays(batch.columns, names=batch.schema.names),
                                  start=np.zeros(len(bodies), dtype=np.int64), checks=checks)
        except BulkUnsupported:
            return None
        if not np.array_equal(sizes, lengths):
            return None
        return batch if _branch_indices_hold(data, lengths, checks) else None


def records_of(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The rows of a decoded batch as the dicts a one-by-one decode gives (enums as str, maps as dicts);
    column by column, as `RecordBatch.to_pylist` is ~7x slower on dictionary (enum) and map columns."""
    return python_values(pa.StructArray.from_arrays(batch.columns, names=batch.schema.names))


def python_values(array: pa.Array) -> list[Any]:
    """The values of `array` as fastavro decodes them: a dictionary (enum) by its indices, a map or a
    record from its children, anything else by `to_pylist`."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        symbols = np.array([*array.dictionary.to_pylist(), None], dtype=object)  # the last one stands for null
        return symbols[array.indices.fill_null(len(symbols) - 1).to_numpy(zero_copy_only=False)].tolist()
    if pa.types.is_map(kind):
        values = _maps(array)
    elif pa.types.is_struct(kind) and kind.num_fields:
        values = _rows_maker(tuple(f.name for f in kind))([python_values(array.field(i)) for i in range(kind.num_fields)])
    elif _holds_map(kind):  # in a list or union; "lossy": a repeated key keeps its last value, as in fastavro
        return array.to_pylist(maps_as_pydicts="lossy")
    else:
        return array.to_pylist()  # (maps_as_pydicts, even where there is no map, makes it ~20x slower)
    if array.null_count:
        for i in np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)).tolist():
            values[i] = None
    return values


@functools.lru_cache(maxsize=256)
def _rows_maker(names: tuple[str, ...]) -> Callable[[list[list[Any]]], list[dict[str, Any]]]:
    """A function making rows (dicts keyed by `names`) of columns: a comprehension with a dict display,
    compiled once per field list (~2x faster than dict(zip(names, row))). Names enter only as literals."""
    keys = ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names))
    targets = ", ".join(f"v{i}" for i in range(len(names)))
    return eval(f"lambda columns: [{{{keys}}} for {targets}, in zip(*columns)]")  # noqa: S307 - names as literals


def _maps(array: pa.MapArray) -> list[dict[str, Any]]:
    """Each map of `array` as a new dict (nulls not set apart)."""
    out: list[dict[str, Any]] = [{} for _ in range(len(array))]
    offsets = array.offsets.to_numpy(zero_copy_only=False)
    first, end = int(offsets[0]), int(offsets[-1])
    if first == end:  # all empty, the common case
        return out
    keys = python_values(array.keys.slice(first, end - first))
    items = python_values(array.items.slice(first, end - first))
    for row, key, item in zip(np.repeat(np.arange(len(array)), np.diff(offsets)).tolist(), keys, items):
        out[row][key] = item  # a key met twice keeps its last value, as in fastavro
    return out


def _holds_map(kind: pa.DataType) -> bool:
    """Whether values of `kind` hold a map somewhere (to_pylist gives maps as lists of pairs by default)."""
    return pa.types.is_map(kind) or any(_holds_map(kind.field(i).type) for i in range(kind.num_fields))
