"""Semantic checks on decoded records: schema-valid but impossible events are rejected with a reason.

Pure: takes a record and the current time, raises `ValidationError`. The reason codes are what the
dead-letter headers carry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from schemas.errors import ValidationError
from schemas.topics import CDC_TOPIC_NAMES, CLICKSTREAM, TopicSpec

MIN_TS_MS = 946_684_800_000  # 2000-01-01: anything earlier is a unit mistake (seconds, not ms)
MAX_FUTURE_MS = 3_600_000  # event times more than 1 h ahead of the wall clock are refused
_ITEM_EVENTS = {"click", "add_to_cart", "purchase"}
_CDC_OPS = {"c", "u", "d", "r"}
# The fields each topic's rules read besides its time field, so that a reader may decode no more of a record
# (tests/unit/test_validation_fields.py holds `validate` to it). Topics not named here: their rules read it all.
RULE_FIELDS = {CLICKSTREAM.name: frozenset({"user_id", "price", "event_type", "item_id"})}

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


def fields_read(spec: TopicSpec) -> frozenset[str] | None:
    """The fields of `spec`'s records that `validate` reads; None: it may read any."""
    fields = RULE_FIELDS.get(spec.name)
    return None if fields is None else fields | {spec.time_field}


def validate(spec: TopicSpec, record: dict[str, Any], now_ms: int) -> None:
    """Raise `ValidationError` if `record` of topic `spec` breaks a rule of the contract."""
    ts = record.get(spec.time_field)
    if not isinstance(ts, int) or ts < MIN_TS_MS:
        raise ValidationError("bad_timestamp", f"{spec.time_field}={ts!r} is before 2000-01-01 (ms expected)")
    if ts > now_ms + MAX_FUTURE_MS:
        raise ValidationError("future_timestamp", f"{spec.time_field}={ts} is more than 1 h in the future")
    if spec.name == CLICKSTREAM.name:  # by name: comparing the specs field by field ran per record (~1% of the flow)
        _clickstream(record)
    elif spec.name in CDC_TOPIC_NAMES:
        _cdc(spec, record)


def _clickstream(record: dict[str, Any]) -> None:
    if not record["user_id"]:
        raise ValidationError("missing_key", "user_id is empty")
    price = record.get("price")
    if price is not None and not (price >= 0 and price < 1e9):
        raise ValidationError("bad_price", f"price={price!r} must be >= 0")
    if record["event_type"] in _ITEM_EVENTS and not record.get("item_id"):
        raise ValidationError("missing_item", f"{record['event_type']} event without item_id")


def _cdc(spec: TopicSpec, record: dict[str, Any]) -> None:
    op = record.get("op")
    if op not in _CDC_OPS:
        raise ValidationError("bad_op", f"op={op!r} is not one of c, u, d, r")
    row = record.get("before") if op == "d" else record.get("after")
    if row is None:
        raise ValidationError("missing_row", f"op={op} needs {'before' if op == 'd' else 'after'}")
    if not spec.key_of(record):
        raise ValidationError("missing_key", f"no primary key in {spec.name} change")
    price = row.get("price")
    if price is not None and not (price >= 0 and price < 1e9):
        raise ValidationError("bad_price", f"price={price!r} must be >= 0")


def suspects(spec: TopicSpec, columns: pa.RecordBatch, now_ms: int) -> np.ndarray | None:
    """Which rows of `columns` (records of `spec` decoded in bulk) may break a rule, column by column: every row
    `validate` rejects and perhaps a few more (they are checked one by one), at a fraction of its cost per
    record. None: `spec` has no such rules, or the columns are not as expected; validate each record.
    tests/unit/test_validation_columns.py holds it to `validate` over generated records."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if spec.name != CLICKSTREAM.name:
        return None
    names = set(columns.schema.names)
    if not names >= {spec.time_field, *RULE_FIELDS[CLICKSTREAM.name]}:
        return None
    ts = columns.column(spec.time_field)
    if not pa.types.is_integer(ts.type) or not pa.types.is_floating(columns.column("price").type):
        return None
    out = ts.is_null().to_numpy(zero_copy_only=False)
    stamps = ts.fill_null(0).to_numpy(zero_copy_only=False)
    out |= (stamps < MIN_TS_MS) | (stamps > now_ms + MAX_FUTURE_MS)
    out |= _blank(columns.column("user_id"))
    price = columns.column("price")
    set_ = price.is_valid().to_numpy(zero_copy_only=False)
    amount = price.fill_null(0.0).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        out |= set_ & ~((amount >= 0) & (amount < 1e9))  # NaN fails both, as in `_clickstream`
    kinds = columns.column("event_type")
    if pa.types.is_dictionary(kinds.type):
        symbols = np.array([s in _ITEM_EVENTS for s in kinds.dictionary.to_pylist()] + [True])
        item_event = symbols[kinds.indices.fill_null(len(symbols) - 1).to_numpy(zero_copy_only=False)]
    else:
        item_event = pc.fill_null(pc.is_in(kinds, value_set=pa.array(sorted(_ITEM_EVENTS))), True).to_numpy(
            zero_copy_only=False) | kinds.is_null().to_numpy(zero_copy_only=False)
    return out | (item_event & _blank(columns.column("item_id")))


def _blank(array: pa.Array) -> np.ndarray:
    """Null or empty (what `not value` is for a string), per row; anything not a string counts as blank."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        import numpy as np

        return np.ones(len(array), dtype=bool)
    return pc.fill_null(pc.equal(pc.binary_length(array), 0), True).to_numpy(zero_copy_only=False)
