"""The simulated shop's tables (users, items) and the weighted picks sessions make from them.

Pure and seeded: every draw goes through the caller's `random.Random`, so a seed fixes the shop.
"""

from __future__ import annotations

import random
from bisect import bisect
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Generic, TypeVar

from streams.features.definitions import DAY_MS

T = TypeVar("T")

COUNTRIES = (("US", 30), ("GB", 10), ("DE", 10), ("IN", 10), ("FR", 8), ("BR", 7), ("CA", 6), ("JP", 6),
             ("ES", 5), ("NL", 4), ("PL", 4))
DEVICES = (("mobile", 55), ("desktop", 35), ("tablet", 8), ("other", 2))
TIERS = (("free", 75), ("plus", 18), ("premium", 7))
# category -> (median price, brands); medians differ by two orders of magnitude, as in a real shop.
CATEGORIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "electronics": (180.0, ("voltix", "nimbus", "arcade", "lumen")),
    "books": (14.0, ("pagewise", "inkwell", "folio")),
    "fashion": (45.0, ("northwind", "tailor", "loom", "stride")),
    "home": (60.0, ("hearth", "nestly", "oakline")),
    "sports": (55.0, ("peak", "sprint", "tidal")),
    "beauty": (22.0, ("glow", "petal", "aura")),
    "toys": (25.0, ("blocko", "whimsy", "tinker")),
    "grocery": (6.0, ("harvest", "pantry", "greenleaf")),
}
CATEGORY_NAMES = tuple(CATEGORIES)


class Weighted(Generic[T]):
    """Draws from a fixed categorical distribution in O(log n): cumulative weights plus bisect."""

    __slots__ = ("values", "_cum", "_total")

    def __init__(self, pairs: list[tuple[T, float]] | tuple[tuple[T, float], ...]):
        if not pairs:
            raise ValueError("Weighted needs at least one value")
        self.values = [v for v, _ in pairs]
        self._cum = list(accumulate(w for _, w in pairs))
        self._total = self._cum[-1]

    def pick(self, rng: random.Random) -> T:
        return self.values[bisect(self._cum, rng.random() * self._total)]


@dataclass(slots=True)
class User:
    """A row of shop.users plus how the person behaves (favourite category, usual device)."""

    user_id: str
    tier: str
    country: str
    signup_ts: int
    marketing_opt_in: bool
    device: str
    favourite: str
    alive: bool = True
    # session state, owned by the generator
    session_id: str = ""
    last_ts: int = -(2**62)
    pending: list[Any] = field(default_factory=list)
    visit: Any = None  # the running visit (a generator), None while idle

    def row(self) -> dict[str, Any]:
        """The table row as the CDC `Value` record."""
        return {"user_id": self.user_id, "tier": self.tier, "country": self.country,
                "signup_ts": self.signup_ts, "marketing_opt_in": self.marketing_opt_in}


@dataclass(slots=True)
class Item:
    """A row of shop.items plus its popularity weight."""

    item_id: str
    category: str
    brand: str
    price: float
    list_price: float  # promotions move `price` around it, so repricing never drifts away
    weight: float
    alive: bool = True

    def row(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "category": self.category, "price": self.price, "brand": self.brand}


class Catalog:
    """Live users and items; item picks follow a Zipf-like popularity, half the time in the user's favourite category."""

    def __init__(self, rng: random.Random, users: int, items: int, origin_ms: int):
        self._rng = rng
        self._countries = Weighted(COUNTRIES)
        self._devices = Weighted(DEVICES)
        self._tiers = Weighted(TIERS)
        self.users: list[User] = []
        self.items: list[Item] = []
        self._pickers: dict[str, Weighted[Item]] | None = None  # rebuilt lazily after items change
        self._next_user = 1
        self._next_item = 1
        for _ in range(users):
            self.new_user(origin_ms - rng.randint(DAY_MS, 730 * DAY_MS))
        for _ in range(items):
            self.new_item()

    # --- rows ------------------------------------------------------------------------------------
    def new_user(self, signup_ts: int) -> User:
        rng = self._rng
        user = User(f"u{self._next_user:05d}", self._tiers.pick(rng), self._countries.pick(rng), signup_ts,
                    rng.random() < 0.4, self._devices.pick(rng), rng.choice(CATEGORY_NAMES))
        self._next_user += 1
        self.users.append(user)
        return user

    def new_item(self) -> Item:
        rng = self._rng
        category = rng.choice(CATEGORY_NAMES)
        median, brands = CATEGORIES[category]
        price = round(max(0.5, rng.lognormvariate(0.0, 0.5) * median), 2)
        weight = 1.0 / (1 + rng.randrange(len(self.items) + 1)) ** 0.8  # rank-based: a few items dominate
        item = Item(f"i{self._next_item:04d}", category, rng.choice(brands), price, price, weight)
        self._next_item += 1
        self.items.append(item)
        self._pickers = None
        return item

    def remove_user(self, user: User) -> None:
        user.alive = False
        self.users.remove(user)

    def remove_item(self, item: Item) -> None:
        item.alive = False
        self.items.remove(item)
        self._pickers = None

    # --- picks ----------------------------------------------------------------------------------
    def pick_item(self, user: User) -> Item:
        pickers = self._pickers if self._pickers is not None else self._build_pickers()
        if user.favourite in pickers and self._rng.random() < 0.5:
            return pickers[user.favourite].pick(self._rng)
        return pickers[""].pick(self._rng)

    def visit_device(self, user: User) -> str:
        """Mostly the user's usual device; sometimes another one (a second phone, the office PC)."""
        return user.device if self._rng.random() < 0.85 else self._devices.pick(self._rng)

    def _build_pickers(self) -> dict[str, Weighted[Item]]:
        pickers: dict[str, Weighted[Item]] = {"": Weighted([(i, i.weight) for i in self.items])}
        for category in CATEGORIES:
            members = [(i, i.weight) for i in self.items if i.category == category]
            if members:
                pickers[category] = Weighted(members)
        self._pickers = pickers
        return pickers
