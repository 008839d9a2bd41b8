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
