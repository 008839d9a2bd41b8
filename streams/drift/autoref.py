"""The "first K windows" reference: a model version with no frozen reference gets one built from a
sample of its own first K windows, so drift is measured without running `streamml drift reference`.

The reference period of a version starts at the window of its first record seen and spans K windows.
Its records are sampled (reservoir, at most `sample_max` rows, kept in Redis so a restart goes on
with it) and not measured; the first record past the period builds the profile, saves it like a
hand-frozen one, and is measured. Redis keys: `drift:autoref:{model}:{version}` (start, seen) and
`…:rows` (the sample as JSON rows).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import redis

from streams.drift.reference import Profile, ProfileStore, profile_of
from streams.drift.windows import window_start


def autoref_key(model: str, version: str) -> str:
    return f"drift:autoref:{model}:{version}"


@dataclass
class _Period:
    start: int
    seen: int
    rows: int


class FirstWindows:
    """Samples reference-period records and builds the profile when a version's period is over."""

    def __init__(self, client: redis.Redis, store: ProfileStore, *, windows: int, window_ms: int, bins: int = 10,
                 sample_max: int = 20_000, seed: int | None = None):
        self.client, self.store = client, store
        self.windows, self.window_ms, self.bins, self.sample_max = windows, window_ms, bins, sample_max
        self._periods: dict[tuple[str, str], _Period] = {}
        self._rnd = random.Random(seed)

    def take(self, records: list[dict[str, Any]]) -> tuple[list[bool], list[Profile]]:
        """For each record (all of versions without a profile): True if it is part of its version's
        reference period (sampled, not to be measured). Also returns the profiles this call completed."""
        taken: list[bool] = []
        built: list[Profile] = []
        pipe = self.client.pipeline(transaction=False)
        for record in records:
            key = (record["model"], record["model_version"])
            if any(p.model == key[0] and p.model_version == key[1] for p in built):
                taken.append(False)
                continue
            period = self._period(key, record["ts"], pipe)
            if record["ts"] >= period.start + self.windows * self.window_ms:
                pipe.execute()
                built.append(self._build(key, period))
                taken.append(False)
                continue
            period.seen += 1
            row = json.dumps({"score": record["score"], "features": record["features"]})
            rows_key = autoref_key(*key) + ":rows"
            if period.rows < self.sample_max:
                pipe.rpush(rows_key, row)
                period.rows += 1
            else:
                slot = self._rnd.randrange(period.seen)
                if slot < self.sample_max:
                    pipe.lset(rows_key, slot, row)
            pipe.hset(autoref_key(*key), "seen", period.seen)
            taken.append(True)
        pipe.execute()
        return taken, built

    def _period(self, key: tuple[str, str], ts: int, pipe: redis.client.Pipeline) -> _Period:
        period = self._periods.get(key)
        if period is None:
            saved = self.client.hgetall(autoref_key(*key))
            if saved:
                period = _Period(int(saved[b"start"]), int(saved.get(b"seen", 0)),
                                 self.client.llen(autoref_key(*key) + ":rows"))
            else:
                period = _Period(window_start(ts, self.window_ms), 0, 0)
                pipe.hset(autoref_key(*key), "start", period.start)
            self._periods[key] = period
        return period

    def _build(self, key: tuple[str, str], period: _Period) -> Profile:
        rows = [json.loads(r) for r in self.client.lrange(autoref_key(*key) + ":rows", 0, -1)]
        end = period.start + self.windows * self.window_ms
        profile = profile_of(key[0], key[1], rows, self.bins, since_ms=period.start, until_ms=end,
                             source=f"first {self.windows} windows ({period.seen} predictions, {len(rows)} sampled)",
                             automatic=True)
        self.store.save(profile)
        self.client.delete(autoref_key(*key), autoref_key(*key) + ":rows")
        del self._periods[key]
        return profile
