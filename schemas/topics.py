"""The topic -> schema contract (DESIGN.md, "Topics and contracts").

Every topic name, its value schema, its key field and its event-time field is stated here once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any

DLQ_SUFFIX = ".dlq"


def load_schema(file_name: str) -> dict[str, Any]:
    """Load one `.avsc` shipped in `schemas/avro/` as a JSON object."""
    text = resources.files("schemas").joinpath("avro", file_name).read_text(encoding="utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the contract: its name, value schema and which fields carry key and event time."""

    name: str
    schema_file: str
    key_field: str  # dotted path; "a|b" tries a, then b (CDC keys live in `after` or `before`)
    time_field: str = "ts"
    doc: str = field(default="", compare=False)

    @property
    def subject(self) -> str:
        """Registry subject under Confluent's TopicNameStrategy."""
        return f"{self.name}-value"

    @property
    def dlq(self) -> str:
        """Dead-letter topic for records of this topic that cannot be decoded or validated."""
        return dlq_topic(self.name)

    @cached_property
    def schema(self) -> dict[str, Any]:
        return load_schema(self.schema_file)

    @property
    def schema_str(self) -> str:
        return json.dumps(self.schema, separators=(",", ":"))

    def key_of(self, record: dict[str, Any]) -> str:
        """The message key for a record of this topic (a string, so any client can read it)."""
        for path in self.key_field.split("|"):
            value: Any = record
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                return str(value)
        return ""


def dlq_topic(topic: str) -> str:
    return f"{topic}{DLQ_SUFFIX}"


CLICKSTREAM = TopicSpec("clickstream.events", "clickstream.avsc", key_field="user_id",
                        doc="User interactions, keyed by user_id.")
CDC_USERS = TopicSpec("cdc.shop.users", "cdc_shop_users.avsc", key_field="after.user_id|before.user_id", time_field="ts_ms",
                      doc="Debezium-style changes of shop.users, keyed by primary key.")
CDC_ITEMS = TopicSpec("cdc.shop.items", "cdc_shop_items.avsc", key_field="after.item_id|before.item_id", time_field="ts_ms",
                      doc="Debezium-style changes of shop.items, keyed by primary key.")
LABELS = TopicSpec("labels", "label.avsc", key_field="prediction_id", doc="Outcomes of predictions.")
PREDICTIONS = TopicSpec("predictions", "prediction_log.avsc", key_field="prediction_id",
                        doc="Every served prediction with its features.")
DRIFT_METRICS = TopicSpec("drift.metrics", "drift_metric.avsc", key_field="feature",
                          doc="PSI per model/feature and closed window.")

TOPICS: tuple[TopicSpec, ...] = (CLICKSTREAM, CDC_USERS, CDC_ITEMS, LABELS, PREDICTIONS, DRIFT_METRICS)
CDC_TOPICS: tuple[TopicSpec, ...] = (CDC_USERS, CDC_ITEMS)
CDC_TOPIC_NAMES = frozenset(t.name for t in CDC_TOPICS)  # topics carrying Debezium envelopes
_BY_NAME = {t.name: t for t in TOPICS}


def topic_spec(name: str) -> TopicSpec:
    """The spec of a contract topic; raises `SchemaError` naming the known topics otherwise."""
    from schemas.errors import SchemaError

    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(sorted(_BY_NAME))
        raise SchemaError(f"unknown topic {name!r}; known topics: {known}") from None


def all_topic_names(with_dlq: bool = True) -> list[str]:
    """Every topic the system uses, DLQs included, for provisioning."""
    names = [t.name for t in TOPICS]
    return names + [dlq_topic(n) for n in names] if with_dlq else names
