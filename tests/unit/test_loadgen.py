"""Unit tests of the load generator: determinism, funnel and session rules, lateness, CDC and schemas.

Pure: the generator does no I/O, so thousands of events take milliseconds to check.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from itertools import islice
from typing import Any

import pytest
from fastavro import parse_schema
from fastavro.validation import validate

from schemas.codec import AvroCodec
from schemas.errors import ConfigError
from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM, LABELS, TopicSpec
from services.loadgen import LoadConfig, LoadGenerator, generate

MINUTE = 60_000


def take(config: LoadConfig, n: int) -> list[tuple[TopicSpec, dict[str, Any]]]:
    return list(islice(generate(config), n))


def clicks(events: list[tuple[TopicSpec, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for spec, r in events if spec is CLICKSTREAM]


def test_same_seed_yields_identical_events_and_another_seed_does_not() -> None:
    config = LoadConfig(users=200, items=50, seed=11, late_fraction=0.1)
    first, again = take(config, 5000), take(config, 5000)
    other = take(dataclasses.replace(config, seed=12), 5000)
    assert [(s.name, r) for s, r in first] == [(s.name, r) for s, r in again]
    assert clicks(first)[:50] != clicks(other)[:50]


def test_every_record_validates_against_its_topic_schema() -> None:
    events = take(LoadConfig(users=300, items=80, seed=3, late_fraction=0.2, cdc_share=0.05), 10_000)
    parsed = {spec.name: parse_schema(spec.schema) for spec in (CLICKSTREAM, CDC_USERS, CDC_ITEMS, LABELS)}
    codecs = {spec.name: AvroCodec(spec.schema) for spec in (CLICKSTREAM, CDC_USERS, CDC_ITEMS, LABELS)}
    for spec, record in events:
        assert validate(record, parsed[spec.name], raise_errors=True)
        assert codecs[spec.name].decode(codecs[spec.name].encode(record)) == record
    assert {spec.name for spec, _ in events} == set(parsed)  # all four topics were exercised


def test_cdc_snapshot_of_every_user_and_item_comes_first() -> None:
    config = LoadConfig(users=120, items=30, seed=5)
    events = take(config, 2000)
    snapshot = events[: config.users + config.items]
    assert [s for s, _ in snapshot] == [CDC_USERS] * config.users + [CDC_ITEMS] * config.items
    assert all(r["op"] == "r" and r["before"] is None and r["after"] is not None for _, r in snapshot)
    assert snapshot[0][1]["source"]["snapshot"] == "first" and snapshot[-1][1]["source"]["snapshot"] == "last"
    assert {r["after"]["user_id"] for s, r in snapshot if s is CDC_USERS} == {f"u{n:05d}" for n in range(1, 121)}
    assert all(r["op"] != "r" for s, r in events[len(snapshot):] if s in (CDC_USERS, CDC_ITEMS))
    assert re.fullmatch(r"i\d{4}", snapshot[-1][1]["after"]["item_id"])


def test_cdc_changes_are_debezium_shaped_with_increasing_lsn() -> None:
    events = take(LoadConfig(users=100, items=40, seed=9, cdc_share=0.2, source_name="pg-test"), 30_000)
    changes = [(s, r) for s, r in events if s in (CDC_USERS, CDC_ITEMS)]
    ops = Counter(r["op"] for _, r in changes)
    assert ops["u"] and ops["c"] and ops["d"] and ops["d"] < ops["c"] < ops["u"]
    lsns = [r["source"]["lsn"] for _, r in changes]
    assert lsns == sorted(lsns) and len(set(lsns)) == len(lsns)
    for spec, r in changes:
        table = "users" if spec is CDC_USERS else "items"
        assert (r["source"]["db"], r["source"]["table"], r["source"]["name"]) == ("shop", table, "pg-test")
        assert r["source"]["ts_ms"] <= r["ts_ms"]
        if r["op"] == "d":
            assert r["after"] is None and r["before"] is not None
        elif r["op"] == "c":
            assert r["before"] is None and r["after"] is not None
        elif r["op"] == "u":
            assert r["before"] != r["after"] and spec.key_of({"after": r["before"]}) == spec.key_of(r)
        assert spec.key_of(r)  # keyed by primary key even for deletes (before)


def test_without_late_events_every_topic_is_in_event_time_order() -> None:
    events = take(LoadConfig(users=200, items=50, seed=1, cdc_share=0.05), 30_000)
    times = [r[s.time_field] for s, r in events]
    assert times == sorted(times)


def test_no_purchase_before_click_and_add_to_cart_of_that_item_in_the_session() -> None:
    seen: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # session -> item -> steps
    purchases = 0
    for r in clicks(take(LoadConfig(users=300, items=60, seed=2), 40_000)):
        steps = seen[r["session_id"]][r["item_id"]]
        if r["event_type"] == "purchase":
            assert {"page_view", "click", "add_to_cart"} <= steps, r
            assert r["page"] == "/checkout" and r["props"]["order_id"].startswith("o-2-")
            purchases += 1
        elif r["event_type"] == "add_to_cart":
            assert {"page_view", "click"} <= steps
        elif r["event_type"] == "click":
            assert "page_view" in steps
        steps.add(r["event_type"])
    assert purchases > 100


def test_funnel_drops_off_at_every_step() -> None:
    counts = Counter(r["event_type"] for r in clicks(take(LoadConfig(seed=4), 20_000)))
    assert counts["page_view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > 0
    assert counts["search"] > 0


def test_session_id_changes_exactly_when_the_user_was_inactive_for_the_gap() -> None:
    # few events per simulated second for many users: users idle for long, so sessions do end
    config = LoadConfig(users=400, items=50, seed=6, event_rate=1.0, session_gap_ms=30 * MINUTE)
    assert config.users >= LoadGenerator(config).timing["users_for_realistic_sessions"]
    last: dict[str, dict[str, Any]] = {}
    new_sessions = 0
    for r in clicks(take(config, 40_000)):
        previous = last.get(r["user_id"])
        last[r["user_id"]] = r
        if previous is None:
            continue
        gap = r["ts"] - previous["ts"]
        if r["session_id"] == previous["session_id"]:
            assert gap < config.session_gap_ms
        else:
            assert gap >= config.session_gap_ms
            new_sessions += 1
    assert new_sessions > 100


def test_late_fraction_is_honoured_and_bounded() -> None:
    config = LoadConfig(users=500, items=100, seed=8, late_fraction=0.1, event_rate=200.0)
    generator = LoadGenerator(config)
    records = clicks(list(islice(generator, 60_000)))
    newest, late, beyond = -1, 0, 0
    for r in records:
        if r["ts"] < newest:  # behind an event that arrived earlier: out of order
            late += 1
            assert newest - r["ts"] <= config.late_max_ms
            beyond += newest - r["ts"] > config.late_within_ms
        newest = max(newest, r["ts"])
    assert late == pytest.approx(0.1 * len(records), rel=0.08)
    assert late <= generator.stats.late  # a late event can only look in order, never the reverse
    assert 0.3 < beyond / late < 0.7  # about half beyond the 5-minute mark (late_within_share=0.5)


def test_view_and_purchase_prices_are_the_items_current_price() -> None:
    price: dict[str, float] = {}
    checked = 0
    for spec, r in take(LoadConfig(users=200, items=40, seed=12, cdc_share=0.1), 40_000):
        if spec is CDC_ITEMS and r["after"] is not None:
            price[r["after"]["item_id"]] = r["after"]["price"]
        elif spec is CLICKSTREAM:
            if r["item_id"] is None:
                assert r["price"] is None
            else:
                assert r["price"] == price[r["item_id"]]
                checked += 1
    assert checked > 10_000


def test_ids_are_unique_and_carry_the_seed() -> None:
    events = take(LoadConfig(users=200, items=40, seed=77), 30_000)
    event_ids = [r["event_id"] for r in clicks(events)]
    prediction_ids = [r["prediction_id"] for s, r in events if s is LABELS]
    assert len(set(event_ids)) == len(event_ids) and all(e.startswith("e-77-") for e in event_ids)
    assert len(set(prediction_ids)) == len(prediction_ids)
    assert all(re.fullmatch(r"p-77-\d+", p) for p in prediction_ids)
    assert all(re.fullmatch(r"u\d{5}", r["user_id"]) for r in clicks(events))


def test_positive_labels_follow_a_purchase_and_negatives_the_horizon() -> None:
    config = LoadConfig(users=300, items=60, seed=13, label_noise=0.0, prediction_share=0.5,
                        label_horizon_ms=2 * MINUTE)
    events = take(config, 40_000)
    labels = Counter()
    previous: dict[str, Any] | None = None
    for spec, r in events:
        if spec is LABELS:
            labels[r["label"]] += 1
            assert r["source"] == "generator"
            if r["label"] == 1:  # emitted right after the purchase it labels, at the same event time
                assert previous is not None and previous["event_type"] == "purchase" and previous["ts"] == r["ts"]
        elif spec is CLICKSTREAM:
            previous = r
    assert labels[0] > labels[1] > 0


def test_density_follows_the_event_rate_in_event_time() -> None:
    for rate in (20.0, 500.0):
        # a short label horizon: negative labels (due a horizon after the view) are part of the steady rate
        config = LoadConfig(users=1000, items=100, seed=3, event_rate=rate, label_horizon_ms=5000)
        events = take(config, 40_000)  # the snapshot included: it is read at the same density
        seconds = (events[-1][1][events[-1][0].time_field] - config.origin_ms) / 1000
        assert len(events) / seconds == pytest.approx(rate, rel=0.1)


@pytest.mark.parametrize("bad", [{"late_fraction": 1.5}, {"users": 0}, {"event_rate": 0},
                                 {"cdc_share": 1.0}, {"late_within_ms": 0}])
def test_config_rejects_impossible_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        LoadConfig(**bad)
