"""Semantic checks on decoded records: schema-valid but impossible events are rejected with a reason.

Pure: takes a record and the current time, raises `ValidationError`. The reason codes are what the
dead-letter headers carry.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import ValidationError
from schemas.topics import CDC_TOPIC_NAMES, CLICKSTREAM, TopicSpec

MIN_TS_MS = 946_684_800_000  # 2000-01-01: anything earlier is a unit mistake (seconds, not ms)
MAX_FUTURE_MS = 3_600_000  # event times more than 1 h ahead of the wall clock are refused
_ITEM_EVENTS = {"click", "add_to_cart", "purchase"}
_CDC_OPS = {"c", "u", "d", "r"}
# The fields each topic's rules read besides its time field, so that a reader may decode no more of a record
# (tests/unit/test_validation_fields.py holds `validate` to it). Topics not named here: their rules read it all.
RULE_FIELDS = {CLICKSTREAM.name: frozenset({"user_id", "price", "event_type", "item_id"})}


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
