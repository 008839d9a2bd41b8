"""The served feature vector: typed values, declared defaults, request-time features."""

from __future__ import annotations

from streams.features.definitions import REQUEST_FEATURES, defaults, served_features
from streams.features.vector import defaults_of, request_values, stored_values


def test_stored_values_are_typed_and_missing_ones_take_the_declared_default() -> None:
    values, ts = stored_values("user", {b"views_1h": b"7", b"spend_24h": b"12.5", b"tier": b"gold",
                                        b"_ts": b"1700000000000"})
    assert values["user.views_1h"] == 7 and isinstance(values["user.views_1h"], int)
    assert values["user.spend_24h"] == 12.5 and values["user.tier"] == "gold"
    assert values["user.clicks_5m"] == defaults()["user.clicks_5m"]
    assert ts == 1_700_000_000_000


def test_an_int_stored_as_a_float_text_is_the_same_int_and_the_other_values_stay_typed() -> None:
    # the straight-line fill parses ints with int() alone; "3.0" makes it take the general loop
    values, ts = stored_values("user", {b"views_1h": b"3.0", b"clicks_5m": b"2", b"tier": b"gold", b"_ts": b"5"})
    assert values["user.views_1h"] == 3 and isinstance(values["user.views_1h"], int)
    assert values["user.clicks_5m"] == 2 and values["user.tier"] == "gold" and ts == 5


def test_an_absent_entity_is_all_defaults_with_no_time() -> None:
    values, ts = stored_values("item", None)
    assert values == defaults_of("item") and ts is None


def test_request_features_come_from_context_or_the_request_time() -> None:
    ts = 1_700_000_000_000  # 22:13 UTC
    values = request_values({"device": "mobile", "position": "3", "other": "x"}, ts)
    assert values == {"request.device": "mobile", "request.position": 3, "request.hour_of_day": 22}
    assert request_values({}, ts)["request.device"] == "unknown"
    assert set(values) == {f.qualified for f in REQUEST_FEATURES}


def test_served_features_are_the_stored_ones_then_the_request_ones() -> None:
    names = served_features()
    assert names[:len(defaults())] == tuple(defaults())
    assert len(set(names)) == len(names)
