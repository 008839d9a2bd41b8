"""The load generator: a seeded discrete-event simulation of a shop that yields typed contract events.

Pure: no I/O and no wall clock. Events come out in event-time order (except the deliberately late
clickstream events), starting with a CDC snapshot so downstream features have attributes first.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from schemas.topics import CLICKSTREAM, LABELS, TopicSpec
from services.loadgen.catalog import Catalog, Item, User, Weighted
from services.loadgen.cdc import ShopChanges
from services.loadgen.config import LoadConfig

Event = tuple[TopicSpec, dict[str, Any]]

SHOP_URL = "https://shop.example"
REFERRERS = ((None, 40), ("https://www.google.com/", 30), ("https://www.bing.com/", 4),
             ("https://www.facebook.com/", 8), ("https://www.instagram.com/", 6), ("https://t.co/", 3),
             ("https://newsletter.shop.example/", 9))
_WAKE, _STEP, _CDC, _LABEL_DUE = range(4)


@dataclass(slots=True)
class Prediction:
    """A prediction-like id issued at a product view; resolved by a purchase or by the horizon."""

    prediction_id: str
    item_id: str
    ts: int
    resolved: bool = False


@dataclass
class GeneratorStats:
    """What the generator has emitted so far (for progress lines and tests)."""

    per_topic: dict[str, int] = field(default_factory=dict)
    late: int = 0
    late_beyond_within: int = 0  # late by more than `late_within_ms`
    predictions: int = 0
    positive_labels: int = 0


class LoadGenerator:
    """Iterating yields `(TopicSpec, record)` forever; the same config always yields the same events.

    Every user alternates idle periods and visits. Visit length and think time are fixed by the
    funnel; the idle time is derived from `event_rate` so that, in event time, the whole shop emits
    about `event_rate` events per second whatever the number of users.
    """

    def __init__(self, config: LoadConfig):
        self.config = config
        self.stats = GeneratorStats()
        self._rng = random.Random(config.seed)
        self._origin = config.origin_ms
        self.catalog = Catalog(self._rng, config.users, config.items, self._origin)
        self._changes = ShopChanges(self.catalog, self._rng, config.source_name)
        self._referrers = Weighted(REFERRERS)
        self._heap: list[tuple[int, int, int, Any]] = []
        self._seq = 0
        self._out: list[Event] = []
        self._now = self._origin
        self._ids = {"e": 0, "s": 0, "p": 0, "o": 0}
        # (prediction_id, user_id, item_id, ts) of each prediction issued, when a caller wants to serve them
        self.issued: list[tuple[str, str, str, int]] | None = None
        self._derive_timing()

    def _derive_timing(self) -> None:
        """Visit cadence per user from the target density (DESIGN: event time must keep pace)."""
        cfg, funnel = self.config, self.config.funnel
        per_visit = funnel.events_per_visit
        labels_per_visit = funnel.steps_per_visit * funnel.product_view * cfg.prediction_share
        click_rate = cfg.event_rate * (1.0 - cfg.cdc_share) * per_visit / (per_visit + labels_per_visit)
        self._visit_every_ms = per_visit / click_rate * 1000.0  # shop-wide: one visit starts this often
        cycle_ms = cfg.users * self._visit_every_ms
        self._gaps_per_visit = max(per_visit - 1.0, 1.0)
        # Few users for a high rate: visits speed up rather than overlap (a user has one session at a time).
        self._think_ms = min(float(cfg.think_ms), cycle_ms / (2.0 * self._gaps_per_visit))
        self._max_gap = cfg.session_gap_ms // 2
        self._cdc_gap_ms = 1000.0 / (cfg.event_rate * cfg.cdc_share) if cfg.cdc_share > 0 else 0.0
        visit_ms = self._gaps_per_visit * self._think_ms
        self.timing = {
            "think_ms": round(self._think_ms, 1),
            "mean_idle_ms": round(self._mean_idle_ms(), 1),
            "visit_every_ms_per_user": round(cycle_ms, 1),
            # below this many users nobody is idle for a whole session gap, so sessions rarely end
            "users_for_realistic_sessions": int((cfg.session_gap_ms + visit_ms) / self._visit_every_ms) + 1,
        }

    def _mean_idle_ms(self) -> float:
        """Idle time between visits, from today's population: sign-ups and deletions keep the density."""
        cycle_ms = len(self.catalog.users) * self._visit_every_ms
        return max(cycle_ms - self._gaps_per_visit * self._think_ms, 1.0)

    @property
    def event_time_ms(self) -> int:
        """The simulated clock: the (arrival) event time the generator has reached."""
        return self._now

    # --- the event loop --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Event]:
        return self._run()

    def _run(self) -> Iterator[Event]:
        yield from self._snapshot()
        rng, live = self._rng, self._now  # traffic starts when the snapshot is done
        for user in self.catalog.users:  # staggered, so the stream starts at its steady density
            self._push(live + int(rng.random() * self.timing["visit_every_ms_per_user"]), _WAKE, user)
        if self._cdc_gap_ms:
            self._push(live + int(rng.expovariate(1.0) * self._cdc_gap_ms), _CDC, None)
        handlers = (self._wake, self._step, self._cdc, self._label_due)
        heap, out, pop = self._heap, self._out, heapq.heappop
        while heap:
            when, _, kind, obj = pop(heap)
            self._now = when
            handlers[kind](obj)
            if out:
                yield from out
                out.clear()

    def _push(self, when: int, kind: int, obj: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, obj))

    def _next_id(self, kind: str) -> str:
        self._ids[kind] += 1
        return f"{kind}-{self.config.seed}-{self._ids[kind]}"

    def _emit(self, spec: TopicSpec, record: dict[str, Any]) -> None:
        self._out.append((spec, record))
        counts = self.stats.per_topic
        counts[spec.name] = counts.get(spec.name, 0) + 1

    # --- users and their visits ------------------------------------------------------------------
    def _wake(self, user: User) -> None:
        if not user.alive:
            return
        if self._now - user.last_ts >= self.config.session_gap_ms:
            user.session_id = self._next_id("s")
        user.visit = self._visit(user)
        self._step(user)

    def _step(self, user: User) -> None:
        if not user.alive:  # deleted mid-visit: nothing more from this account
            user.visit = None
            return
        try:
            gap = next(user.visit)
        except StopIteration:
            user.visit = None
            self._push(self._now + 1 + int(self._rng.expovariate(1.0) * self._mean_idle_ms()), _WAKE, user)
            return
        self._push(self._now + gap, _STEP, user)

    def _gap(self) -> int:
        return min(int(self._rng.expovariate(1.0) * self._think_ms), self._max_gap)

    def _visit(self, user: User) -> Generator[int, None, None]:
        """One visit: emits an event, then yields the gap to the next; returns right after its last event."""
        rng, funnel, catalog = self._rng, self.config.funnel, self.catalog
        device = catalog.visit_device(user)
        referrer = self._referrers.pick(rng)
        landing = True
        cart: list[Item] = []
        while True:
            draw = rng.random()
            if draw < funnel.search:
                item = catalog.pick_item(user)  # what the user has in mind
                query = f"{item.brand} {item.category}" if rng.random() < 0.5 else item.category
                page = "/search"
                self._click(user, "search", None, page, referrer, device, {"query": query}, landing)
            elif draw < funnel.search + funnel.browse:
                page = "/" if landing or rng.random() < 0.3 else f"/c/{user.favourite}"
                self._click(user, "page_view", None, page, referrer, device, {}, landing)
            else:
                item = catalog.pick_item(user)
                page = f"/p/{item.item_id}"
                props = {"category": item.category, "brand": item.brand}
                self._click(user, "page_view", item, page, referrer, device, props, landing)
                if rng.random() < self.config.prediction_share:
                    self._predict(user, item)
                if rng.random() < funnel.click:
                    yield self._gap()
                    referrer = SHOP_URL + page
                    self._click(user, "click", item, page, referrer, device, {"target": "details"}, False)
                    if rng.random() < funnel.add_to_cart:
                        yield self._gap()
                        self._click(user, "add_to_cart", item, page, referrer, device, {"qty": "1"}, False)
                        cart.append(item)
            landing = False
            referrer = SHOP_URL + page
            if rng.random() >= funnel.next_step:
                break
            yield self._gap()
        if not cart or rng.random() >= funnel.checkout:
            return
        order_id = self._next_id("o")
        for item in cart:
            yield self._gap()
            props = {"order_id": order_id, "qty": "1", "currency": "USD"}
            self._click(user, "purchase", item, "/checkout", referrer, device, props, False)
            self._resolve(user, item)
            referrer = SHOP_URL + "/checkout"

    def _click(self, user: User, event_type: str, item: Item | None, page: str, referrer: str | None,
               device: str, props: dict[str, str], landing: bool) -> None:
        now = self._now
        user.last_ts = now
        if landing and referrer is not None and "newsletter" in referrer:
            props["utm_source"] = "newsletter"
        self._emit(CLICKSTREAM, {
            "event_id": self._next_id("e"),
            "user_id": user.user_id,
            "session_id": user.session_id,
            "event_type": event_type,
            "item_id": item.item_id if item is not None else None,
            "price": item.price if item is not None else None,
            "ts": now - self._lateness(),
            "page": page,
            "referrer": referrer,
            "device": device,
            "country": user.country,
            "props": props,
        })

    def _lateness(self) -> int:
        """0 for most events; for `late_fraction` of them, how far their event time lags their arrival."""
        cfg = self.config
        if not cfg.late_fraction or self._rng.random() >= cfg.late_fraction:
            return 0
        self.stats.late += 1
        floor = min(1000, cfg.late_within_ms // 2)  # late by at least a second: clearly out of order
        if self._rng.random() < cfg.late_within_share:
            return self._rng.randint(floor, cfg.late_within_ms - 1)
        self.stats.late_beyond_within += 1
        return self._rng.randint(cfg.late_within_ms, cfg.late_max_ms)

    # --- predictions and labels -----------------------------------------------------------------
    def _predict(self, user: User, item: Item) -> None:
        prediction = Prediction(self._next_id("p"), item.item_id, self._now)
        user.pending.append(prediction)
        self.stats.predictions += 1
        if self.issued is not None:
            self.issued.append((prediction.prediction_id, user.user_id, item.item_id, self._now))
        self._push(self._now + self.config.label_horizon_ms, _LABEL_DUE, (user, prediction))

    def _resolve(self, user: User, item: Item) -> None:
        """A purchase labels every open prediction for this (user, item): mostly 1, sometimes noise."""
        for prediction in user.pending:
            if not prediction.resolved and prediction.item_id == item.item_id:
                prediction.resolved = True
                self._label(prediction, positive=True)

    def _label_due(self, payload: tuple[User, Prediction]) -> None:
        user, prediction = payload
        user.pending.remove(prediction)
        if not prediction.resolved:
            prediction.resolved = True
            self._label(prediction, positive=False)

    def _label(self, prediction: Prediction, positive: bool) -> None:
        if self._rng.random() < self.config.label_noise:
            positive = not positive
        self.stats.positive_labels += positive
        self._emit(LABELS, {"prediction_id": prediction.prediction_id, "label": int(positive),
                            "ts": self._now, "source": "generator"})

    # --- CDC ------------------------------------------------------------------------------------
    def _snapshot(self) -> Iterator[Event]:
        """The initial snapshot, read at `event_rate` like everything else, so event time keeps pace
        with a rate-limited run even while a large snapshot is being published."""
        per_row_ms = 1000.0 / self.config.event_rate
        for spec, record in self._changes.snapshot(self._origin, per_row_ms):
            self._now = record["ts_ms"]
            self._emit(spec, record)
            yield self._out.pop()
        self._now = self._origin + int((len(self.catalog.users) + len(self.catalog.items)) * per_row_ms)

    def _cdc(self, _: None) -> None:
        (spec, record), signed_up = self._changes.next_change(self._now)
        self._emit(spec, record)
        if signed_up is not None:  # a new account: its first visit comes after a normal idle time
            self._push(self._now + 1 + int(self._rng.expovariate(1.0) * self._mean_idle_ms()), _WAKE, signed_up)
        self._push(self._now + 1 + int(self._rng.expovariate(1.0) * self._cdc_gap_ms), _CDC, None)


def generate(config: LoadConfig) -> Iterator[Event]:
    """Shorthand for `iter(LoadGenerator(config))` when the caller needs no stats."""
    return iter(LoadGenerator(config))
