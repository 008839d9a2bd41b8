"""The Redis feature writer: absolute values, millisecond compare-and-set on `_ts`, deletes, TTL."""

from __future__ import annotations

import pytest
import redis

from streams.features.keys import feature_key
from streams.features.shard import EntityWrites
from streams.sinks.redis import FeatureWriter

pytestmark = pytest.mark.integration


def test_a_write_never_replaces_a_later_event_time(redis_db_url):
    writer = FeatureWriter(redis_db_url)
    client = redis.Redis.from_url(redis_db_url, decode_responses=True)
    assert writer.write([EntityWrites("user", [("u1", 2_000, {"clicks_5m": 3, "tier": "plus"})])]) == (1, 0)
    # A replay or a slow worker arrives with an older view: refused, value unchanged.
    assert writer.write([EntityWrites("user", [("u1", 1_999, {"clicks_5m": 1})])]) == (0, 1)
    assert client.hget(feature_key("user", "u1"), "clicks_5m") == "3"
    # The same event time again (a restart replaying output) is accepted: writes are absolute.
    assert writer.write([EntityWrites("user", [("u1", 2_000, {"clicks_5m": 3, "tier": "plus"})])]) == (1, 0)


def test_missing_attributes_are_deleted_and_ttl_is_set(redis_db_url):
    writer = FeatureWriter(redis_db_url)
    client = redis.Redis.from_url(redis_db_url, decode_responses=True)
    writer.write([EntityWrites("user", [("u2", 10, {"tier": "plus", "country": "DE", "views_1h": 2})])])
    writer.write([EntityWrites("user", [("u2", 11, {"views_1h": 2})])])  # CDC delete removed the attributes
    stored = client.hgetall(feature_key("user", "u2"))
    assert stored == {"_ts": "11", "views_1h": "2"}
    assert 0 < client.pttl(feature_key("user", "u2")) <= 7 * 24 * 3600 * 1000


def test_floats_round_trip_exactly(redis_db_url):
    writer = FeatureWriter(redis_db_url)
    client = redis.Redis.from_url(redis_db_url, decode_responses=True)
    value = 0.1 + 0.2
    writer.write([EntityWrites("user", [("u3", 5, {"spend_24h": value})])])
    assert float(client.hget(feature_key("user", "u3"), "spend_24h")) == value


def test_script_is_reloaded_after_redis_forgets_it(redis_db_url):
    writer = FeatureWriter(redis_db_url, max_retry_s=5)
    writer.write([EntityWrites("item", [("i1", 5, {"views_1h": 1})])])
    redis.Redis.from_url(redis_db_url).script_flush()
    assert writer.write([EntityWrites("item", [("i1", 6, {"views_1h": 2})])]) == (1, 0)


def test_namespace_keeps_writes_out_of_serving_keys(redis_db_url):
    FeatureWriter(redis_db_url, namespace="blue").write([EntityWrites("user", [("u4", 5, {"views_1h": 1})])])
    client = redis.Redis.from_url(redis_db_url)
    assert client.exists(feature_key("user", "u4")) == 0
    assert client.exists(feature_key("user", "u4", "blue")) == 1


def test_rows_queued_together_write_each_key_once_with_its_last_row(redis_db_url):
    """Batches that queued up behind a write go out as one: an entity's later row supersedes its earlier ones
    (as the script would have, row after row), so each key is written once."""
    writer = FeatureWriter(redis_db_url)
    client = redis.Redis.from_url(redis_db_url, decode_responses=True)
    first = EntityWrites("user", [("u7", 100, {"views_1h": 1, "tier": "plus"}), ("u8", 100, {"views_1h": 5})], 1)
    second = EntityWrites("user", [("u7", 130, {"views_1h": 2})], 3)
    items = EntityWrites("item", [("i7", 120, {"views_1h": 9})], 2)
    assert writer.write([first, items, second]) == (3, 0)  # u7 once (its last row), u8, i7
    assert client.hgetall(feature_key("user", "u7")) == {"_ts": "130", "views_1h": "2"}  # tier gone, as row 2 says
    assert client.hget(feature_key("user", "u8"), "views_1h") == "5"
    assert client.hget(feature_key("item", "i7"), "views_1h") == "9"


def test_a_write_larger_than_one_send_reaches_every_key(redis_db_url):
    """Script calls go out CALLS_PER_SEND at a time while the rest are packed: every key is written, once."""
    from streams.sinks.redis import CALLS_PER_SEND, ROWS_PER_CALL

    writer = FeatureWriter(redis_db_url)
    client = redis.Redis.from_url(redis_db_url, decode_responses=True)
    n = CALLS_PER_SEND * ROWS_PER_CALL * 2 + 7
    rows = [(f"bulk{i}", 1_000 + i, {"views_1h": i}) for i in range(n)]
    assert writer.write([EntityWrites("user", rows)]) == (n, 0)
    assert [client.hget(feature_key("user", f"bulk{i}"), "views_1h") for i in (0, n // 2, n - 1)] == \
           ["0", str(n // 2), str(n - 1)]
    assert writer.write([EntityWrites("user", rows[:3])]) == (3, 0)  # the same event times again: absolute values
