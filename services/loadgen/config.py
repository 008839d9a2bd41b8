"""What the load generator simulates: population sizes, seed, lateness, traffic density, funnel rates.

Plain frozen dataclasses, validated on construction so a bad CLI option fails before any I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.errors import ConfigError
from streams.features.definitions import MINUTE_MS

# 2023-11-14T22:13:20Z: a fixed epoch so a config without `start_ms` still generates identical data.
DEFAULT_START_MS = 1_700_000_000_000


@dataclass(frozen=True)
class Funnel:
    """Per-step probabilities of a visit; defaults give ~8 events per visit and ~2% of views bought."""

    search: float = 0.15  # a step is a search ...
    browse: float = 0.15  # ... or a page without an item (home, category) ...
    # ... otherwise a product page view, which may lead on:
    click: float = 0.45  # page_view -> click (e.g. on "details", a variant, the gallery)
    add_to_cart: float = 0.30  # click -> add_to_cart
    checkout: float = 0.55  # a visit with a non-empty cart ends with a purchase of every cart item
    next_step: float = 0.80  # another step follows (so a visit has 1 / (1 - next_step) steps on average)

    def __post_init__(self) -> None:
        for name in ("search", "browse", "click", "add_to_cart", "checkout", "next_step"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"funnel probability {name}={value} must be within [0, 1]")
        if self.search + self.browse > 1.0:
            raise ConfigError("funnel search + browse must not exceed 1 (the rest are product views)")
        if self.next_step >= 1.0:
            raise ConfigError("funnel next_step must be < 1, or a visit never ends")

    @property
    def product_view(self) -> float:
        return 1.0 - self.search - self.browse

    @property
    def steps_per_visit(self) -> float:
        return 1.0 / (1.0 - self.next_step)

    @property
    def events_per_visit(self) -> float:
        """Expected clickstream events of one visit (steps, their funnel follow-ups, then purchases)."""
        per_step = self.search + self.browse + self.product_view * (1.0 + self.click * (1.0 + self.add_to_cart))
        carted = self.steps_per_visit * self.product_view * self.click * self.add_to_cart
        return self.steps_per_visit * per_step + self.checkout * carted


@dataclass(frozen=True)
class LoadConfig:
    """One simulated shop: who uses it, how busy it is in event time, and how messy delivery is.

    `event_rate` is the density in *event time* (events per simulated second across all topics);
    `run_load` sets it to the wall-clock rate so event time keeps pace with the wall clock.
    """

    users: int = 1000
    items: int = 200
    seed: int = 0
    late_fraction: float = 0.0
    start_ms: int | None = None  # None = DEFAULT_START_MS (the generator never reads a clock)
    event_rate: float = 100.0
    cdc_share: float = 0.01  # share of the event rate that is CDC changes after the snapshot
    prediction_share: float = 0.2  # share of product views that get a prediction id and later a label
    label_noise: float = 0.03  # chance a label disagrees with what the user did
    label_horizon_ms: int = 30 * MINUTE_MS  # no purchase within this -> label 0 (DESIGN.md, label job)
    session_gap_ms: int = 30 * MINUTE_MS  # inactivity that ends a session
    think_ms: int = 15_000  # mean gap between events of one visit (shrunk when users are few for the rate)
    late_within_ms: int = 5 * MINUTE_MS  # late events are split around this lateness ...
    late_max_ms: int = 20 * MINUTE_MS  # ... and never later than this
    late_within_share: float = 0.5  # share of late events that are late by less than `late_within_ms`
    source_name: str = "loadgen"  # Debezium `source.name`: tells generated CDC apart from a real connector
    funnel: Funnel = field(default_factory=Funnel)

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 1:
            raise ConfigError(f"users ({self.users}) and items ({self.items}) must both be >= 1")
        for name in ("late_fraction", "cdc_share", "prediction_share", "label_noise", "late_within_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value} must be within [0, 1]")
        if self.cdc_share >= 1.0:
            raise ConfigError("cdc_share must be < 1: some of the traffic has to be clickstream")
        if self.event_rate <= 0:
            raise ConfigError(f"event_rate={self.event_rate} must be > 0 events per simulated second")
        if not 0 < self.late_within_ms <= self.late_max_ms:
            raise ConfigError("need 0 < late_within_ms <= late_max_ms")
        if self.think_ms < 1 or self.session_gap_ms <= 2 * self.think_ms:
            raise ConfigError("session_gap_ms must exceed twice think_ms, or every pause would end a session")

    @property
    def origin_ms(self) -> int:
        return DEFAULT_START_MS if self.start_ms is None else self.start_ms
