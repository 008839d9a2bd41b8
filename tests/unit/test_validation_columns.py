"""The contract rules on a poll's columns (`suspects`) flag exactly the records `validate` rejects."""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import AvroCodec, frame
from schemas.errors import ValidationError
from schemas.serde import TopicSerde
from schemas.topics import CDC_USERS, CLICKSTREAM
from schemas.validation import MAX_FUTURE_MS, MIN_TS_MS, suspects, validate

NOW = int(time.time() * 1000)
CODEC = AvroCodec(CLICKSTREAM.schema)


class Registry:
    def register(self, subject: str, schema: Any) -> int:
        return 1

    def schema_by_id(self, schema_id: int) -> str | None:
        return json.dumps(CLICKSTREAM.schema)


records = st.fixed_dictionaries({
    "event_id": st.just("e"), "user_id": st.sampled_from(["", "u1", " "]), "session_id": st.just("s"),
    "event_type": st.sampled_from(["page_view", "click", "add_to_cart", "purchase", "search"]),
    "item_id": st.sampled_from([None, "", "i1"]),
    "price": st.one_of(st.none(), st.sampled_from([-1.0, -0.0, 0.0, 1e9, 1e9 - 1, float("nan"), float("inf")]),
                       st.floats(allow_nan=True, allow_infinity=True)),
    "ts": st.sampled_from([0, -5, MIN_TS_MS - 1, MIN_TS_MS, NOW, NOW + MAX_FUTURE_MS, NOW + MAX_FUTURE_MS + 1]),
    "page": st.just("/"), "referrer": st.none(), "device": st.just("mobile"), "country": st.just("DE"),
    "props": st.just({}),
})


def _rejected(record: dict[str, Any]) -> bool:
    try:
        validate(CLICKSTREAM, record, NOW)
    except ValidationError:
        return True
    return False


@given(st.lists(records, min_size=1, max_size=40))
@settings(max_examples=150, deadline=None)
def test_the_column_rules_flag_what_validate_rejects(rows) -> None:
    """Blank ids, prices that are negative, NaN, infinite or too large, item events without an item, times before
    2000 or over an hour ahead: row for row, the same verdict from the decoded columns as from each record."""
    values = [frame(1, CODEC.encode(r)) for r in rows]
    decoded = TopicSerde(CLICKSTREAM, Registry()).deserialize_many(values, bulk_min=1)
    (indices, columns), = decoded.columns
    assert indices == list(range(len(rows)))
    records_back = decoded.outcomes(len(rows))
    flagged = suspects(CLICKSTREAM, columns, NOW)
    assert flagged is not None and flagged.tolist() == [_rejected(r) for r in records_back]


def test_topics_without_column_rules_are_checked_record_by_record() -> None:
    columns = pa.RecordBatch.from_pydict({"ts": [NOW]})
    assert suspects(CDC_USERS, columns, NOW) is None  # CDC rules read nested rows: each record is validated
    assert suspects(CLICKSTREAM, columns, NOW) is None  # columns the rules need are missing
