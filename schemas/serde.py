"""Per-topic serializer/deserializer: contract schema in, Confluent-framed bytes out, and back.

Writer schemas met on the wire are fetched once by id and resolved against the contract schema,
so records written with an older (BACKWARD-compatible) schema still decode to today's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cachetools import TTLCache

from schemas.codec import HEADER_SIZE, MAGIC_BYTE, AvroCodec, frame, split_frame
from schemas.errors import DecodeError, RegistryError
from schemas.topics import TopicSpec

if TYPE_CHECKING:
    import pyarrow as pa

    from schemas.bulk import BulkDecoder

_UNKNOWN_ID_TTL_S = 30.0
_UNKNOWN_IDS_MAX = 10_000  # bounded: random bytes in the id field must not grow memory without end
# Bulk decoding costs ~2 ms per call plus ~4 us per clickstream record here, one by one ~8-12 us: it pays
# from about 256-384 records, and a live flow's polls are often smaller.
BULK_MIN = 384


class SchemaSource(Protocol):
    """What a serde needs from a registry (`schemas.registry.RegistryClient` or a test double)."""

    def register(self, subject: str, schema: dict[str, Any] | str) -> int: ...

    def schema_by_id(self, schema_id: int) -> str | None: ...


@dataclass
class Decoded:
    """What `TopicSerde.deserialize_many` made of a list of values, by their index in it."""

    columns: list[tuple[list[int], pa.RecordBatch]] = field(default_factory=list)  # decoded in bulk
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # decoded one by one
    errors: dict[int, DecodeError] = field(default_factory=dict)  # not located: the caller knows where
    # writer schema not fetched, registry down (only with report_outage): retry from the first, don't dead-letter
    unavailable: dict[int, RegistryError] = field(default_factory=dict)

    def outcomes(self, n: int, fields: frozenset[str] | None = None) -> list[dict[str, Any] | DecodeError | RegistryError]:
        """What each of the `n` values became, in order: its record, as `deserialize` returns it, or its error.
        `fields`: the records decoded in bulk keep only these (a clickstream record's dict took 2.06 µs to build with
        its 12 fields, 0.48 with the 6 the feature flow reads)."""
        out: list[Any] = [None] * n
        if self.columns:
            from schemas.bulk import records_of  # imports pyarrow: only once a batch was decoded in bulk

            for indices, batch in self.columns:
                if fields is not None:
                    batch = batch.select([name for name in batch.schema.names if name in fields])
                for i, record in zip(indices, records_of(batch), strict=True):
                    out[i] = record
        for found in (self.records, self.errors, self.unavailable):
            for i, outcome in found.items():
                out[i] = outcome
        return out


class TopicSerde:
    """Encodes and decodes the values of one contract topic."""

    def __init__(self, spec: TopicSpec, registry: SchemaSource):
        self.spec = spec
        self.codec = AvroCodec(spec.schema)
        self._registry = registry
        self._schema_id: int | None = None
        self._writers: dict[int, AvroCodec] = {}
        self._unknown: TTLCache[int, bool] = TTLCache(_UNKNOWN_IDS_MAX, _UNKNOWN_ID_TTL_S)
        self._bulk: BulkDecoder | None = None

    @property
    def schema_id(self) -> int:
        """The registry id of the contract schema, registered on first use."""
        if self._schema_id is None:
            self._schema_id = self._registry.register(self.spec.subject, self.spec.schema)
            self._writers[self._schema_id] = self.codec
        return self._schema_id

    def serialize(self, record: dict[str, Any]) -> bytes:
        return frame(self.schema_id, self.codec.encode(record))

    def deserialize(self, data: bytes | None, partition: int | None = None, offset: int | None = None) -> dict[str, Any]:
        """Decode one framed value; `DecodeError` (with topic/partition/offset) when the bytes are bad.

        A `RegistryError` (registry down) is not the record's fault and propagates for a retry.
        """
        try:
            schema_id, body = split_frame(data)
            return self.codec.decode(body, self._writer(schema_id))
        except DecodeError as exc:
            raise exc.located(self.spec.name, partition, offset) from exc

    def deserialize_many(self, values: Sequence[bytes | None], bulk_min: int | None = None, report_outage: bool = False
                         ) -> Decoded:
        """Decode many framed values: those written with the contract schema (at least `bulk_min` of them,
        default `BULK_MIN`) into Arrow columns at once (`schemas.bulk`), the rest one by one as `deserialize`
        would; a batch the bulk decoder refuses is decoded one by one, so the result is always what
        `deserialize` gives.

        A `RegistryError` propagates, unless `report_outage`: then the values of that writer schema and of
        those first met after it are left in `unavailable` (the registry is not asked again), and the
        first of them is where `deserialize`, value after value, would have raised it."""
        bulk_min = BULK_MIN if bulk_min is None else bulk_min
        out = Decoded()
        by_header: dict[bytes, list[int]] = {}  # by magic byte and schema id, as they are: cheaper than by id
        for i, data in enumerate(values):
            if data is not None and len(data) > HEADER_SIZE and data[0] == MAGIC_BYTE:
                by_header.setdefault(data[:HEADER_SIZE], []).append(i)
            else:
                try:
                    split_frame(data)
                except DecodeError as exc:
                    out.errors[i] = exc
        groups = [(int.from_bytes(header[1:], "big"), indices) for header, indices in by_header.items()]
        for n, (schema_id, indices) in enumerate(groups):
            try:
                writer = self._writer(schema_id)
            except DecodeError as exc:
                out.errors.update(dict.fromkeys(indices, exc))
                continue
            except RegistryError as exc:
                if not report_outage:
                    raise
                for _, rest in groups[n:]:
                    out.unavailable.update(dict.fromkeys(rest, exc))
                break
            bodies = [values[i][HEADER_SIZE:] for i in indices]  # type: ignore[index]  # (copies beat memoryviews)
            if writer is self.codec and len(indices) >= bulk_min:
                batch = self.bulk_decoder().decode(bodies)
                if batch is not None:
                    out.columns.append((indices, batch))
                    continue
            for i, body in zip(indices, bodies, strict=True):
                try:
                    out.records[i] = self.codec.decode(body, writer)
                except DecodeError as exc:
                    out.errors[i] = exc
        return out

    def bulk_decoder(self) -> BulkDecoder:
        """The contract schema's bulk decoder, built on first use (it imports pyarrow and compiles the schema:
        ~1 s here). A long-running consumer calls it at start, so its first big poll does not wait for that."""
        if self._bulk is None:
            from schemas.bulk import BulkDecoder

            self._bulk = BulkDecoder(self.codec.schema)
        return self._bulk

    def _writer(self, schema_id: int) -> AvroCodec:
        writer = self._writers.get(schema_id)
        if writer is not None:
            return writer
        if schema_id in self._unknown:
            raise DecodeError("unknown_schema", f"schema id {schema_id} is not in the registry")
        text = self._registry.schema_by_id(schema_id)  # RegistryError propagates: retry, don't dead-letter
        if text is None:
            self._unknown[schema_id] = True
            raise DecodeError("unknown_schema", f"schema id {schema_id} is not in the registry")
        try:
            writer = AvroCodec(text)
        except Exception as exc:
            raise DecodeError("bad_writer_schema", f"schema id {schema_id} does not parse: {exc}") from exc
        if writer.fingerprint == self.codec.fingerprint:
            writer = self.codec  # same schema under another id: skip resolution
        self._writers[schema_id] = writer
        return writer
