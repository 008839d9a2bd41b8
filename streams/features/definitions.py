"""The one declarative list of features. Live flow, replay, serving defaults, training export and
drift all read it; adding a feature is adding one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM, TopicSpec

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


class Agg(StrEnum):
    """How a feature is computed from its source events."""

    COUNT = "count"  # events matching the filter in the window
    SUM = "sum"  # sum of `value_field` over matching events in the window
    MEAN = "mean"  # mean of `value_field` over matching events in the window (default when none)
    DISTINCT = "distinct"  # exact number of distinct non-null `value_field` values in the window
    MAX = "max"  # maximum of `value_field` over all events (no window)
    SESSION_COUNT = "session_count"  # events of the session of the entity's latest event
    RATIO = "ratio"  # inputs[0] / inputs[1] of two windowed features, 0 when the denominator is 0
    ATTRIBUTE = "attribute"  # latest value of `value_field` from a CDC table; a delete removes it
    AGE_DAYS = "age_days"  # whole days from a CDC timestamp attribute to the entity's latest event time


@dataclass(frozen=True)
class Entity:
    """A thing features describe; its Redis hash is `feat:{name}:{id}`."""

    name: str
    ttl_s: int
    keys: tuple[tuple[str, str], ...]  # (source topic name, field holding this entity's id)

    def id_field(self, topic: str) -> str | None:
        for name, field_name in self.keys:
            if name == topic:
                return field_name
        return None


@dataclass(frozen=True)
class Window:
    """A sliding event-time window of `length_ms`, kept as `tiles` tiles of `length_ms / tiles` each.

    The value at evaluation time t covers the tiles (tile(t) - tiles, tile(t)], i.e. between
    `length_ms - tile_ms` and `length_ms` of history: tile granularity is the stated precision.
    """

    length_ms: int
    tiles: int = 60

    def __post_init__(self) -> None:
        if self.length_ms % self.tiles:
            raise ValueError(f"window {self.length_ms} ms is not a whole number of {self.tiles} tiles")

    @property
    def tile_ms(self) -> int:
        return self.length_ms // self.tiles


@dataclass(frozen=True)
class FeatureDefinition:
    """One feature: what it describes, where it comes from and how it is aggregated."""

    name: str
    entity: Entity
    source: TopicSpec
    aggregation: Agg
    dtype: str  # "int" | "float" | "str"
    default: Any
    window: Window | None = None
    where: tuple[tuple[str, Any], ...] = ()  # all (field, value) pairs must match
    value_field: str | None = None
    inputs: tuple[str, ...] = ()
    doc: str = field(default="", compare=False)
    model_input: bool = True  # False: served and logged, but models do not learn from it (e.g. raw times)

    @property
    def qualified(self) -> str:
        """Name unique across entities, used in feature vectors and logs: `user.views_1h`."""
        return f"{self.entity.name}.{self.name}"

    def matches(self, event: Mapping[str, Any]) -> bool:
        return all(event.get(f) == v for f, v in self.where)


USER = Entity("user", ttl_s=7 * 24 * 3600, keys=((CLICKSTREAM.name, "user_id"), (CDC_USERS.name, "user_id")))
ITEM = Entity("item", ttl_s=7 * 24 * 3600, keys=((CLICKSTREAM.name, "item_id"), (CDC_ITEMS.name, "item_id")))
ENTITIES: tuple[Entity, ...] = (USER, ITEM)

_5M, _1H, _24H = Window(5 * MINUTE_MS), Window(HOUR_MS), Window(DAY_MS)


def _count(name: str, entity: Entity, event_type: str, window: Window, doc: str) -> FeatureDefinition:
    return FeatureDefinition(name, entity, CLICKSTREAM, Agg.COUNT, "int", 0, window,
                             where=(("event_type", event_type),), doc=doc)


FEATURES: tuple[FeatureDefinition, ...] = (
    # user, from clickstream
    _count("clicks_5m", USER, "click", _5M, "Clicks in the last 5 minutes."),
    _count("views_1h", USER, "page_view", _1H, "Page views in the last hour."),
    _count("cart_adds_1h", USER, "add_to_cart", _1H, "Add-to-cart events in the last hour."),
    _count("purchases_24h", USER, "purchase", _24H, "Purchases in the last 24 hours."),
    FeatureDefinition("spend_24h", USER, CLICKSTREAM, Agg.SUM, "float", 0.0, _24H,
                      where=(("event_type", "purchase"),), value_field="price", doc="Sum of purchase prices, 24 h."),
    FeatureDefinition("avg_price_viewed_1h", USER, CLICKSTREAM, Agg.MEAN, "float", 0.0, _1H,
                      where=(("event_type", "page_view"),), value_field="price",
                      doc="Mean price of viewed items in the last hour (views with a price)."),
    FeatureDefinition("distinct_items_1h", USER, CLICKSTREAM, Agg.DISTINCT, "int", 0, _1H,
                      value_field="item_id", doc="Distinct items touched in the last hour, exact."),
    FeatureDefinition("session_events", USER, CLICKSTREAM, Agg.SESSION_COUNT, "int", 0,
                      value_field="session_id", doc="Events in the session of the user's latest event."),
    FeatureDefinition("last_event_ts", USER, CLICKSTREAM, Agg.MAX, "int", 0, value_field="ts",
                      doc="Event time (ms) of the user's latest event.", model_input=False),
    # user, from CDC
    FeatureDefinition("tier", USER, CDC_USERS, Agg.ATTRIBUTE, "str", "unknown", value_field="tier"),
    FeatureDefinition("country", USER, CDC_USERS, Agg.ATTRIBUTE, "str", "unknown", value_field="country"),
    FeatureDefinition("account_age_days", USER, CDC_USERS, Agg.AGE_DAYS, "int", 0, value_field="signup_ts",
                      doc="Whole days from signup to the user's latest event time."),
    # item, from clickstream re-keyed by item_id
    _count("views_1h", ITEM, "page_view", _1H, "Views of the item in the last hour."),
    _count("clicks_1h", ITEM, "click", _1H, "Clicks on the item in the last hour."),
    _count("purchases_24h", ITEM, "purchase", _24H, "Purchases of the item in the last 24 hours."),
    FeatureDefinition("ctr_1h", ITEM, CLICKSTREAM, Agg.RATIO, "float", 0.0, _1H,
                      inputs=("clicks_1h", "views_1h"), doc="clicks_1h / views_1h, 0 when no views."),
    # item, from CDC
    FeatureDefinition("category", ITEM, CDC_ITEMS, Agg.ATTRIBUTE, "str", "unknown", value_field="category"),
    FeatureDefinition("price", ITEM, CDC_ITEMS, Agg.ATTRIBUTE, "float", 0.0, value_field="price"),
)


@dataclass(frozen=True)
class RequestFeature:
    """A feature known only at request time: read from the request's `context` (or its time) by serving,
    logged with the prediction, never stored online. `source` is `context.<field>` or `ts.hour_of_day`.
    """

    name: str
    source: str
    dtype: str  # "int" | "float" | "str"
    default: Any
    doc: str = field(default="", compare=False)

    @property
    def qualified(self) -> str:
        return f"request.{self.name}"

    @property
    def context_field(self) -> str | None:
        return self.source.split(".", 1)[1] if self.source.startswith("context.") else None


REQUEST_FEATURES: tuple[RequestFeature, ...] = (
    RequestFeature("device", "context.device", "str", "unknown", "Client device: desktop, mobile, tablet, app."),
    RequestFeature("position", "context.position", "int", 0, "Slot of the item in the list shown (0 = top)."),
    RequestFeature("hour_of_day", "ts.hour_of_day", "int", 0, "UTC hour of the request."),
)


def features_of(entity: Entity) -> tuple[FeatureDefinition, ...]:
    return tuple(f for f in FEATURES if f.entity == entity)


def feature(qualified: str) -> FeatureDefinition:
    """Look a feature up by `entity.name`."""
    for f in FEATURES:
        if f.qualified == qualified:
            return f
    raise KeyError(f"unknown feature {qualified!r}; known: {', '.join(f.qualified for f in FEATURES)}")


def defaults() -> dict[str, Any]:
    """qualified name -> declared default of every stored feature (what serving uses when one is missing)."""
    return {f.qualified: f.default for f in FEATURES}


def model_inputs(*dtypes: str) -> tuple[str, ...]:
    """Qualified names of the served features of these dtypes that models learn from."""
    stored = tuple(f.qualified for f in FEATURES if f.model_input and f.dtype in dtypes)
    return stored + tuple(r.qualified for r in REQUEST_FEATURES if r.dtype in dtypes)


def served_features() -> tuple[str, ...]:
    """Qualified names of every feature a prediction uses and logs: stored ones, then request ones."""
    return tuple(f.qualified for f in FEATURES) + tuple(r.qualified for r in REQUEST_FEATURES)


def source_topics() -> tuple[TopicSpec, ...]:
    """Every topic the feature flow consumes, derived from the list."""
    return tuple(dict.fromkeys(f.source for f in FEATURES))
