"""Avro cases shared by the bulk-decoding tests: contract and extra schemas with their codecs and bulk decoders,
Hypothesis strategies of their records, sample records, corruptions of bodies and a clickstream registry."""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from schemas.bulk import BulkDecoder
from schemas.codec import AvroCodec
from schemas.errors import DecodeError, RegistryError
from schemas.topics import CDC_ITEMS, CLICKSTREAM, PREDICTIONS

PRED_CODEC = AvroCodec(PREDICTIONS.schema)
CLICK_CODEC = AvroCodec(CLICKSTREAM.schema)
PRED_BULK = BulkDecoder(PREDICTIONS.schema)
CLICK_BULK = BulkDecoder(CLICKSTREAM.schema)
CDC_CODEC = AvroCodec(CDC_ITEMS.schema)
CDC_BULK = BulkDecoder(CDC_ITEMS.schema)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(SETTINGS, max_examples=150)

# ---------------------------------------------------------------------------------------------- strategies

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)
long_text = st.one_of(text, text.map(lambda t: (t + "é") * 40))  # >= 80 bytes: a 2-byte length
big_map = st.integers(64, 66).map(lambda n: {f"k{i}": "v" * (i % 3) for i in range(n)})  # a 2-byte count
doubles = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308]))
longs = st.one_of(st.sampled_from([-(2**63), 2**63 - 1, 0, -1, 1, 63, 64, -64, -65, 2**31, -(2**31) - 1]),
                  st.integers(-(2**63), 2**63 - 1))

predictions = st.fixed_dictionaries({
    "prediction_id": long_text,
    "model": text,
    "model_version": text,
    "entities": st.one_of(st.dictionaries(text, text, max_size=3), big_map),
    "features": st.dictionaries(text, st.one_of(st.none(), doubles, text), max_size=6),
    "score": doubles,
    "ts": longs,
    "latency_ms": doubles,
})

clicks = st.fixed_dictionaries({
    "event_id": text,
    "user_id": text,
    "session_id": text,
    "event_type": st.sampled_from(["page_view", "click", "add_to_cart", "purchase", "search"]),
    "item_id": st.one_of(st.none(), text),
    "price": st.one_of(st.none(), doubles),
    "ts": longs,
    "page": long_text,
    "referrer": st.one_of(st.none(), text),
    "device": st.sampled_from(["desktop", "mobile", "tablet", "other"]),
    "country": text,
    "props": st.dictionaries(text, text, max_size=4),
})

item_rows = st.fixed_dictionaries({
    "item_id": text,
    "category": st.one_of(st.none(), text),
    "price": st.one_of(st.none(), doubles),
    "brand": st.one_of(st.none(), long_text),
})

changes = st.fixed_dictionaries({  # nullable unions in records, and records in nullable unions
    "before": st.one_of(st.none(), item_rows),
    "after": st.one_of(st.none(), item_rows),
    "source": st.fixed_dictionaries({
        "version": text, "connector": text, "name": text, "ts_ms": longs, "snapshot": st.one_of(st.none(), text),
        "db": text, "schema": st.one_of(st.none(), text), "table": text, "txId": st.one_of(st.none(), longs),
        "lsn": st.one_of(st.none(), longs), "pos": st.one_of(st.none(), longs),
    }),
    "op": st.sampled_from(["c", "u", "d", "r"]),
    "ts_ms": longs,
})

# Not a contract schema: nullable unions with null second, one holding a record that holds two more.
NULL_LAST = {"type": "record", "name": "NullLast", "fields": [
    {"name": "a", "type": ["long", "null"]},
    {"name": "s", "type": ["string", "null"]},
    {"name": "inner", "type": [{"type": "record", "name": "Inner", "fields": [
        {"name": "x", "type": ["null", "double"]},
        {"name": "e", "type": [{"type": "enum", "name": "Side", "symbols": ["buy", "sell"]}, "null"]},
    ]}, "null"]},
    {"name": "m", "type": {"type": "map", "values": "long"}},
    {"name": "tail", "type": ["null", "long"]},
]}
NULL_LAST_CODEC = AvroCodec(NULL_LAST)
NULL_LAST_BULK = BulkDecoder(NULL_LAST)

null_last = st.fixed_dictionaries({
    "a": st.one_of(st.none(), longs),
    "s": st.one_of(st.none(), long_text),
    "inner": st.one_of(st.none(), st.fixed_dictionaries({
        "x": st.one_of(st.none(), doubles), "e": st.one_of(st.none(), st.sampled_from(["buy", "sell"]))})),
    "m": st.dictionaries(text, longs, max_size=3),
    "tail": st.one_of(st.none(), longs),
})

# Not a contract schema: the other types the size rule covers (enum, int, boolean, float, bytes, fixed, array).
MIXED = {"type": "record", "name": "Mixed", "fields": [
    {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["red", "green", "blue"]}},
    {"name": "i", "type": "int"},
    {"name": "b", "type": "boolean"},
    {"name": "f", "type": "float"},
    {"name": "raw", "type": "bytes"},
    {"name": "fx", "type": {"type": "fixed", "name": "F4", "size": 4}},
    {"name": "xs", "type": {"type": "array", "items": "long"}},
    {"name": "m", "type": {"type": "map", "values": ["null", "double", "string"]}},
]}
MIXED_CODEC = AvroCodec(MIXED)
MIXED_BULK = BulkDecoder(MIXED)

mixed = st.fixed_dictionaries({
    "e": st.sampled_from(["red", "green", "blue"]),
    "i": st.one_of(st.sampled_from([-(2**31), 2**31 - 1, 0, -1]), st.integers(-(2**31), 2**31 - 1)),
    "b": st.booleans(),
    "f": st.floats(width=32),
    "raw": st.one_of(st.binary(max_size=8), st.binary(max_size=8).map(lambda b: b * 8 + bytes(64))),
    "fx": st.binary(min_size=4, max_size=4),
    "xs": st.one_of(st.lists(longs, max_size=5), longs.map(lambda v: [v] * 65)),
    "m": st.dictionaries(text, st.one_of(st.none(), doubles, text), max_size=4),
})

KINDS = {  # name -> (codec, bulk decoder, record strategy, codec/strategy of another schema)
    "predictions": (PRED_CODEC, PRED_BULK, predictions, CLICK_CODEC, clicks),
    "clickstream": (CLICK_CODEC, CLICK_BULK, clicks, PRED_CODEC, predictions),
    "cdc": (CDC_CODEC, CDC_BULK, changes, PRED_CODEC, predictions),
    "null_last": (NULL_LAST_CODEC, NULL_LAST_BULK, null_last, PRED_CODEC, predictions),
    "mixed": (MIXED_CODEC, MIXED_BULK, mixed, PRED_CODEC, predictions),
}

SAMPLE = {
    "predictions": {"prediction_id": "p1", "model": "ranker", "model_version": "v1", "entities": {"user": "u1"},
                    "features": {"user.views_1h": 3.0, "request.device": "mobile", "user.tier": None},
                    "score": 0.25, "ts": 1_700_000_000_000, "latency_ms": 1.5},
    "mixed": {"e": "blue", "i": -7, "b": False, "f": 0.5, "raw": b"\x00", "fx": b"abcd", "xs": [2**40],
              "m": {"k": None}},
    "clickstream": {"event_id": "e1", "user_id": "u1", "session_id": "s1", "event_type": "purchase", "item_id": "i9",
                    "price": 19.99, "ts": 1_700_000_000_123, "page": "/item/i9", "referrer": None,
                    "device": "mobile", "country": "DE", "props": {"ab": "b"}},
    "cdc": {"before": None, "after": {"item_id": "i9", "category": "toys", "price": None, "brand": "acme"},
            "source": {"version": "1", "connector": "pg", "name": "shop", "ts_ms": 1_700_000_000_000, "snapshot": None,
                       "db": "shop", "schema": "public", "table": "items", "txId": 7, "lsn": None, "pos": 3},
            "op": "c", "ts_ms": 1_700_000_000_001},
    "null_last": {"a": 5, "s": None, "inner": {"x": None, "e": "sell"}, "m": {"k": 1}, "tail": None},
}





def _map_fields(schema: dict[str, Any]) -> list[str]:
    return [f["name"] for f in schema["fields"] if isinstance(f["type"], dict) and f["type"]["type"] == "map"]


def rows_of(batch: pa.RecordBatch, schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch's rows as fastavro would give them: maps (lists of pairs in Arrow) as dicts."""
    maps = _map_fields(schema)
    rows = batch.to_pylist()
    for row in rows:
        for name in maps:
            row[name] = dict(row[name])
    return rows


def one_by_one(codec: AvroCodec, body: bytes) -> dict[str, Any] | DecodeError:
    try:
        return codec.decode(body)
    except DecodeError as exc:
        return exc


@st.composite
def corrupted(draw: st.DrawFn, bodies: list[bytes], others: list[bytes]) -> list[bytes]:
    """`bodies` with one to three random corruptions."""
    bodies = list(bodies)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(bodies) - 1))
        body = bodies[i]
        kind = draw(st.sampled_from(["append", "truncate", "flip", "replace", "insert", "delete", "splice",
                                     "other", "duplicate", "shift", "shift"]))
        if kind == "append":
            body = body + draw(st.binary(min_size=1, max_size=4))
        elif kind == "truncate" and body:
            body = body[:draw(st.integers(0, len(body) - 1))]
        elif kind in ("flip", "replace", "delete") and body:
            pos = draw(st.integers(0, len(body) - 1))
            if kind == "flip":
                byte = body[pos] ^ (1 << draw(st.integers(0, 7)))
            elif kind == "replace":
                byte = draw(st.integers(0, 255))
            body = body[:pos] + (b"" if kind == "delete" else bytes([byte])) + body[pos + 1:]
        elif kind == "insert":
            pos = draw(st.integers(0, len(body)))
            body = body[:pos] + draw(st.binary(min_size=1, max_size=2)) + body[pos:]
        elif kind == "splice":
            donor = bodies[draw(st.integers(0, len(bodies) - 1))]
            body = body[:draw(st.integers(0, len(body)))] + donor[draw(st.integers(0, len(donor))):]
        elif kind == "other":
            body = draw(st.sampled_from(others))
        elif kind == "duplicate":  # one body twice, glued
            body = body + body
        elif kind == "shift" and i + 1 < len(bodies):  # the boundary with the next body moves: same bytes in all
            cut = len(body) + draw(st.integers(-len(body), len(bodies[i + 1])).filter(bool))
            both = body + bodies[i + 1]
            body, bodies[i + 1] = both[:cut], both[cut:]
        bodies[i] = body
    return bodies



def click_record(i: int, **fields: Any) -> dict[str, Any]:
    """The i-th of a varied set of clickstream records (every enum symbol, null and set optionals, 0-3 props)."""
    symbols = CLICKSTREAM.schema["fields"][3]["type"]["symbols"]
    devices = CLICKSTREAM.schema["fields"][9]["type"]["symbols"]
    return {**SAMPLE["clickstream"], "event_id": f"e{i}", "user_id": f"ü{i % 7}", "event_type": symbols[i % len(symbols)],
            "item_id": None if i % 3 == 0 else f"i{i}", "price": None if i % 2 else i * 0.5, "ts": 1_700_000_000_000 + i,
            "referrer": None if i % 5 else "https://ex.ample/é", "device": devices[i % len(devices)],
            "props": {f"k{j}": str(i * j) for j in range(i % 4)}, **fields}



CLICK_ID = 1


class ClickRegistry:
    """The clickstream contract under CLICK_ID; looking up any of `down_ids` fails (registry down)."""

    def __init__(self, down_ids: set[int] | None = None) -> None:
        self.down_ids = down_ids or set()

    def register(self, subject: str, schema: dict[str, Any] | str) -> int:
        return CLICK_ID

    def schema_by_id(self, schema_id: int) -> str | None:
        if schema_id in self.down_ids:
            raise RegistryError("registry down")
        return json.dumps(CLICKSTREAM.schema) if schema_id == CLICK_ID else None

