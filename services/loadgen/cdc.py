"""Debezium-style change events of the simulated shop database (cdc_shop_users/items.avsc).

`ShopChanges` applies each change to the catalog first and returns its envelope, so the
clickstream that follows always sees the state the CDC topics describe (e.g. a new price).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from schemas.topics import CDC_ITEMS, CDC_USERS, TopicSpec
from services.loadgen.catalog import COUNTRIES, TIERS, Catalog, User

DB = "shop"
SCHEMA = "public"
_FIRST_LSN = 24_000_000  # arbitrary, non-zero like a real WAL position
_TIER_NAMES = tuple(t for t, _ in TIERS)
_MOVE_TO = tuple(c for c, _ in COUNTRIES[:5])

Change = tuple[TopicSpec, dict[str, Any]]


class ShopChanges:
    """Snapshot and live changes of shop.users and shop.items; LSNs grow across both, as in one WAL."""

    def __init__(self, catalog: Catalog, rng: random.Random, source_name: str):
        self.catalog = catalog
        self._rng = rng
        self.source_name = source_name
        self.lsn = _FIRST_LSN

    def snapshot(self, origin_ms: int, per_row_ms: float) -> Iterator[Change]:
        """op=r for every row, users then items, as Debezium's initial snapshot reads table by table."""
        rows = [(CDC_USERS, "users", u.row()) for u in self.catalog.users]
        rows += [(CDC_ITEMS, "items", i.row()) for i in self.catalog.items]
        last = len(rows) - 1
        for n, (spec, table, row) in enumerate(rows):
            marker = "first" if n == 0 else "last" if n == last else "true"
            yield spec, self.envelope(table, "r", None, row, origin_ms + int(n * per_row_ms), snapshot=marker)

    def next_change(self, now_ms: int) -> tuple[Change, User | None]:
        """One random change at `now_ms`, already applied; plus the user who just signed up, if any."""
        rng = self._rng
        if rng.random() < 0.5:
            return self._change_user(rng.random(), now_ms)
        return self._change_item(rng.random(), now_ms), None

    def envelope(self, table: str, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
                 ts_ms: int, commit_lag_ms: int = 0, snapshot: str | None = "false") -> dict[str, Any]:
        """One change: `ts_ms` is capture (event) time; the commit happened `commit_lag_ms` earlier."""
        self.lsn += 184 if op == "d" else 312
        return {
            "before": before,
            "after": after,
            "source": {"version": "streamml", "connector": "loadgen", "name": self.source_name,
                       "ts_ms": ts_ms - commit_lag_ms, "snapshot": snapshot, "db": DB, "schema": SCHEMA,
                       "table": table, "txId": None, "lsn": self.lsn, "pos": None},
            "op": op,
            "ts_ms": ts_ms,
        }

    def _live(self, table: str, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
              now_ms: int) -> dict[str, Any]:
        return self.envelope(table, op, before, after, now_ms, commit_lag_ms=self._rng.randint(1, 50))

    def _change_user(self, draw: float, now_ms: int) -> tuple[Change, User | None]:
        catalog, rng = self.catalog, self._rng
        if draw < 0.08 or len(catalog.users) < 2:  # sign-up: a new actor joins the simulation
            user = catalog.new_user(now_ms)
            return (CDC_USERS, self._live("users", "c", None, user.row(), now_ms)), user
        user = rng.choice(catalog.users)
        if draw < 0.11:  # account deletion (rare): the user's actor stops
            catalog.remove_user(user)
            return (CDC_USERS, self._live("users", "d", user.row(), None, now_ms)), None
        before, what = user.row(), rng.random()
        if what < 0.5:
            user.tier = rng.choice([t for t in _TIER_NAMES if t != user.tier])
        elif what < 0.9:
            user.marketing_opt_in = not user.marketing_opt_in
        else:
            user.country = rng.choice([c for c in _MOVE_TO if c != user.country])
        return (CDC_USERS, self._live("users", "u", before, user.row(), now_ms)), None

    def _change_item(self, draw: float, now_ms: int) -> Change:
        catalog, rng = self.catalog, self._rng
        if draw < 0.05:
            item = catalog.new_item()
            return CDC_ITEMS, self._live("items", "c", None, item.row(), now_ms)
        item = rng.choice(catalog.items)
        if draw < 0.08 and len(catalog.items) > 1:  # delisting (rare)
            catalog.remove_item(item)
            return CDC_ITEMS, self._live("items", "d", item.row(), None, now_ms)
        before = item.row()  # repricing around the list price; later views and purchases carry it
        price = round(max(0.5, item.list_price * rng.lognormvariate(-0.03, 0.08)), 2)
        item.price = price if price != item.price else round(price + 0.01, 2)  # a change is a change
        return CDC_ITEMS, self._live("items", "u", before, item.row(), now_ms)
