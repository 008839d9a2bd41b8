"""The CDC reader against a real PostgreSQL (wal_level=logical), a real broker and registry, and the feature flow.

Rows written in PostgreSQL must arrive as Debezium-style envelopes that decode with the contract, become
the entities' attributes in Redis, survive kill -9 of the reader at any point without loss, and evolve
the registered schema on ALTER TABLE.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest

from schemas.codec import AvroCodec, split_frame
from schemas.registry import RegistryClient
from schemas.topics import CDC_ITEMS, CDC_USERS
from tests.flowkit import flow_env, provision, read_back, start_flow, wait_for_redis
from tests.oracle import accepted_in_partition_order, expected_features
from tests.pgkit import DDL, SIGNUP_MS, item, query, sql, user
from tests.servers import free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

def reader_env(home: Path, bootstrap: str, registry_url: str, dsn: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "STREAMML_HOME": str(home), "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMML_SCHEMA_REGISTRY_URL": registry_url, "STREAMML_CDC_DSN": dsn, "STREAMML_CDC_TABLES": "public.users,public.items",
            "STREAMML_CDC_METRICS_PORT": "0", "STREAMML_CDC_FEEDBACK_S": "0.2", "STREAMML_TOPIC_PARTITIONS": "4",
            **extra}


def start_reader(env: dict[str, str], log_path: Path, dsn: str) -> subprocess.Popen:
    """`streamml cdc` as a child process, returned once its slot is streaming."""
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "cdc"], env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)

    def streaming() -> bool:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        return bool(query(dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'streamml_cdc' AND active"))

    wait_for(streaming, 60, "the CDC reader's slot to become active")
    return proc


def confirmed_flush(dsn: str) -> int:
    from streams.cdc.pgoutput import parse_lsn

    rows = query(dsn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'streamml_cdc'")
    return parse_lsn(rows[0][0])


def current_lsn(dsn: str) -> int:
    from streams.cdc.pgoutput import parse_lsn

    return parse_lsn(query(dsn, "SELECT pg_current_wal_insert_lsn()::text")[0][0])


def cdc_records(bootstrap: str, registry_url: str, expected: int, timeout_s: float = 60) -> list[tuple]:
    rows = read_back(bootstrap, registry_url, [CDC_USERS, CDC_ITEMS], expected, timeout_s)
    assert len(rows) >= expected, f"{len(rows)} CDC records on the topics, expected at least {expected}"
    assert all(r[3] is not None for r in rows), "a CDC record did not decode with the contract schema"
    return rows


def by_key(rows: list[tuple]) -> dict[str, list[dict[str, Any]]]:
    """key -> its envelopes in offset order (one key lives on one partition)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, _, topic, record, _ in sorted(rows, key=lambda r: (r[2], r[0], r[1])):
        spec = CDC_USERS if topic == CDC_USERS.name else CDC_ITEMS
        out[spec.key_of(record)].append(record)
    return out


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_rows_become_envelopes_and_entity_attributes(fresh_kafka, registry_url, shop_db, redis_db_url, tmp_path):
    sql(shop_db, DDL, user("u0"), user("u1"), user("u2"), user("u3"), user("u4", "plus", "FR"),
        item("i0"), item("i1", "toys", 25.5), item("i2"))
    provision(fresh_kafka)
    reader = start_reader(reader_env(tmp_path, fresh_kafka, registry_url, shop_db), tmp_path / "cdc.log", shop_db)
    try:
        sql(shop_db, user("u5"), user("u6", "premium"),
            "UPDATE users SET tier = 'premium', country = 'FR' WHERE user_id = 'u1'")
        sql(shop_db, "DELETE FROM users WHERE user_id = 'u2'", "UPDATE items SET price = 9.99 WHERE item_id = 'i1'")
        sql(shop_db, "UPDATE users SET user_id = 'u3b' WHERE user_id = 'u3'")  # a primary-key change
        sql(shop_db, item("i3", "garden", 3.5), "DELETE FROM items WHERE item_id = 'i2'")
        conn = psycopg2.connect(shop_db)
        with conn.cursor() as cur:
            cur.execute(user("u99"))
        conn.rollback()  # never committed: must never appear
        conn.close()
        last_write = current_lsn(shop_db)

        rows = cdc_records(fresh_kafka, registry_url, expected=8 + 6 + 3)
        assert len(rows) == 17
        keys = by_key(rows)
        ops = {k: [r["op"] for r in v] for k, v in keys.items()}
        assert ops == {"u0": ["r"], "u1": ["r", "u"], "u2": ["r", "d"], "u3": ["r", "d"], "u4": ["r"], "u5": ["c"],
                       "u6": ["c"], "u3b": ["c"], "i0": ["r"], "i1": ["r", "u"], "i2": ["r", "d"], "i3": ["c"]}
        assert keys["u1"][-1]["after"] == {"user_id": "u1", "tier": "premium", "country": "FR",
                                           "signup_ts": SIGNUP_MS, "marketing_opt_in": False}
        assert keys["u1"][-1]["before"] is None  # REPLICA IDENTITY DEFAULT sends no old row for an update
        assert keys["u2"][-1]["before"] == {"user_id": "u2", "tier": None, "country": None, "signup_ts": None,
                                            "marketing_opt_in": None}  # only the key of a deleted row
        assert keys["i1"][-1]["before"] == {"item_id": "i1", "category": "toys", "price": 25.5, "brand": "acme"}
        assert keys["i1"][-1]["after"]["price"] == 9.99  # REPLICA IDENTITY FULL: the whole old row
        snapshot = sorted((r["source"]["lsn"], r["source"]["snapshot"]) for v in keys.values() for r in v
                          if r["op"] == "r")
        assert [s for _, s in snapshot].count("first") == 1 and [s for _, s in snapshot].count("last") == 1
        live = [r for v in keys.values() for r in v if r["op"] != "r"]
        assert all(r["source"]["db"] == "shop" and r["source"]["connector"] == "postgresql" for r in live)
        tx = {r["source"]["txId"] for r in live if (r["after"] or r["before"]).get("user_id") in ("u5", "u6", "u1")}
        assert len(tx) == 1  # one source transaction, one txId
        assert all(r["source"]["lsn"] <= last_write for r in live)

        wait_for(lambda: confirmed_flush(shop_db) >= max(r["source"]["lsn"] for r in live), 20,
                 "the slot to confirm what Kafka acknowledged")

        # The feature flow turns the envelopes into entity attributes, as it does the generator's.
        flow = start_flow(flow_env(tmp_path / "flow", fresh_kafka, registry_url, redis_db_url), tmp_path / "flow.log")
        try:
            accepted, _ = accepted_in_partition_order([r[:4] for r in rows], lateness_ms=300_000)
            want = expected_features(accepted)
            got = wait_for_redis(redis_db_url, want, 90)
            assert got.keys() == want.keys()
            assert {k: got[k] for k in want if got[k] != pytest.approx(want[k])} == {}
            assert got[("user", "u1")]["tier"] == "premium" and got[("user", "u1")]["country"] == "FR"
            assert "tier" not in got[("user", "u2")] and "tier" not in got[("user", "u3")]
            assert got[("user", "u3b")]["tier"] == "free"
            assert got[("item", "i1")]["price"] == 9.99 and "category" not in got[("item", "i2")]
            assert got[("item", "i3")]["category"] == "garden"
        finally:
            flow.send_signal(signal.SIGTERM)
            flow.wait(30)
        assert stop(reader) == 0
    finally:
        if reader.poll() is None:
            reader.kill()


def test_kill_9_between_write_and_acknowledgement_loses_nothing(hangable_broker, registry_url, shop_db, tmp_path):
    """Kill -9 (1) after Kafka acknowledged but before the slot was confirmed, (2) with the broker hung so
    nothing was acknowledged; after each restart every committed change is on the topic."""
    broker, bootstrap = hangable_broker, f"127.0.0.1:{hangable_broker.port}"
    sql(shop_db, DDL)
    provision(bootstrap)
    log = tmp_path / "cdc.log"
    # Confirm rarely: the kill comes after Kafka has the records and before PostgreSQL hears of it.
    reader = start_reader(reader_env(tmp_path, bootstrap, registry_url, shop_db, STREAMML_CDC_FEEDBACK_S="120"),
                          log, shop_db)
    confirmed_before = confirmed_flush(shop_db)
    for n in range(10):
        sql(shop_db, user(f"a{n}"), f"UPDATE users SET country = 'FR' WHERE user_id = 'a{n}'")
    cdc_records(bootstrap, registry_url, expected=20)
    assert confirmed_flush(shop_db) == confirmed_before  # the writes are in Kafka, not yet confirmed
    reader.kill()
    reader.wait(10)

    reader = start_reader(reader_env(tmp_path, bootstrap, registry_url, shop_db), log, shop_db)
    for n in range(10, 15):
        sql(shop_db, user(f"a{n}"))
    cdc_records(bootstrap, registry_url, expected=20 + 20 + 5)  # the unconfirmed 20 again, then the new 5
    wait_for(lambda: confirmed_flush(shop_db) > confirmed_before, 20, "the slot to advance")

    broker.pause()  # Kafka hangs: the reader reads the WAL but nothing is acknowledged
    try:
        confirmed_hung = confirmed_flush(shop_db)
        for n in range(15, 25):
            sql(shop_db, user(f"a{n}", "plus"))
        time.sleep(2)
        assert confirmed_flush(shop_db) == confirmed_hung
        reader.kill()
        reader.wait(10)
    finally:
        broker.resume()
    reader = start_reader(reader_env(tmp_path, bootstrap, registry_url, shop_db), log, shop_db)
    try:
        rows = cdc_records(bootstrap, registry_url, expected=45 + 10, timeout_s=90)
        keys = by_key(rows)
        assert {f"a{n}" for n in range(25)} <= keys.keys()
        assert all(keys[f"a{n}"][-1]["after"]["country"] == "FR" for n in range(10))
        assert all(keys[f"a{n}"][-1]["after"]["tier"] == "plus" for n in range(15, 25))
        wait_for(lambda: confirmed_flush(shop_db) >= max(r[3]["source"]["lsn"] for r in rows), 20,
                 "the slot to confirm the delivered changes")
        assert stop(reader) == 0
    finally:
        if reader.poll() is None:
            reader.kill()


def test_alter_table_evolves_the_schema_and_incompatible_changes_stop_the_reader(fresh_kafka, registry_url, shop_db,
                                                                                 tmp_path):
    sql(shop_db, DDL, user("u0"))
    provision(fresh_kafka)
    log = tmp_path / "cdc.log"
    reader = start_reader(reader_env(tmp_path, fresh_kafka, registry_url, shop_db), log, shop_db)
    try:
        sql(shop_db, "ALTER TABLE users ADD COLUMN loyalty_points integer NOT NULL DEFAULT 0",
            "UPDATE users SET loyalty_points = 5 WHERE user_id = 'u0'")
        rows = cdc_records(fresh_kafka, registry_url, expected=2)
        change = next(r for r in rows if r[3]["op"] == "u")
        assert change[3]["after"]["tier"] == "free"  # the contract reads the new version (it ignores the column)
        registry = RegistryClient(registry_url)
        schema_id, _ = split_frame(change[4])
        writer = AvroCodec(registry.schema_by_id(schema_id))
        assert writer.decode(split_frame(change[4])[1])["after"]["loyalty_points"] == 5
        first_id = split_frame(next(r for r in rows if r[3]["op"] == "r")[4])[0]
        assert schema_id != first_id

        sql(shop_db, "ALTER TABLE users ALTER COLUMN country TYPE integer USING 0",
            "UPDATE users SET country = 7 WHERE user_id = 'u0'")
        assert reader.wait(30) != 0
        assert "not backward compatible" in log.read_text()
        time.sleep(0.5)
        # the refused transaction is still in the slot: a fixed reader restarted on it gets the update again.
        # (Its ALTER rewrites the table first, so while it was being written a keepalive may rightly have moved
        # the slot past the last record sent: a bound on the position itself only held by timing.)
        messages = query(shop_db, "SELECT data FROM pg_logical_slot_peek_binary_changes('streamml_cdc', NULL, NULL, "
                                  "'proto_version', '1', 'publication_names', 'streamml_cdc')")
        assert any(bytes(m[0])[:1] == b"U" for m in messages), [bytes(m[0])[:1] for m in messages]
    finally:
        if reader.poll() is None:
            reader.kill()


def test_a_second_reader_stands_by_and_takes_over(fresh_kafka, registry_url, shop_db, tmp_path):
    sql(shop_db, DDL)
    provision(fresh_kafka)
    env = reader_env(tmp_path, fresh_kafka, registry_url, shop_db)
    first = start_reader(env, tmp_path / "first.log", shop_db)
    second = start_reader(env, tmp_path / "second.log", shop_db)
    try:
        wait_for(lambda: "standing by" in (tmp_path / "second.log").read_text(), 30, "the second reader to stand by")
        sql(shop_db, user("s1"))
        cdc_records(fresh_kafka, registry_url, expected=1)
        assert stop(first) == 0
        sql(shop_db, user("s2"))
        keys = by_key(cdc_records(fresh_kafka, registry_url, expected=2))
        assert {"s1", "s2"} <= keys.keys()
        assert "streaming changes" in (tmp_path / "second.log").read_text()
        assert stop(second) == 0
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()


def test_kill_9_during_the_initial_snapshot_resnapshots_and_streams_what_happened_since(
        hangable_broker, registry_url, shop_db, tmp_path):
    rows = 5000
    bootstrap = f"127.0.0.1:{hangable_broker.port}"
    sql(shop_db, DDL, f"INSERT INTO users SELECT 'b' || n, 'free', 'DE', now(), false FROM generate_series(1, {rows}) n")
    provision(bootstrap)
    env = reader_env(tmp_path, bootstrap, registry_url, shop_db)
    log = tmp_path / "cdc.log"
    reader = subprocess.Popen([sys.executable, "-m", "services.cli", "cdc"], env=env, stdout=open(log, "ab"),
                              stderr=subprocess.STDOUT)
    # Once the slot exists the snapshot is being read; with the broker hung it cannot be acknowledged
    # (so it is never marked done) when the reader dies.
    wait_for(lambda: query(shop_db, "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'streamml_cdc'"), 60,
             "the slot to be created")
    hangable_broker.pause()
    try:
        time.sleep(1)
        reader.kill()
        reader.wait(10)
    finally:
        hangable_broker.resume()
    assert "snapshot done" not in log.read_text()
    partial = len(read_back(bootstrap, registry_url, [CDC_USERS], rows, timeout_s=5))
    sql(shop_db, "DELETE FROM users WHERE user_id = 'b1'", "UPDATE users SET tier = 'plus' WHERE user_id = 'b2'")
    reader = start_reader(env, log, shop_db)
    try:
        keys = by_key(cdc_records(bootstrap, registry_url, expected=partial + rows - 1 + 2, timeout_s=120))
        assert {f"b{n}" for n in range(1, rows + 1)} <= keys.keys()
        assert keys["b1"][-1]["op"] == "d" and keys["b2"][-1]["after"]["tier"] == "plus"
        assert "snapshotting tables the slot has not covered" in log.read_text()
        assert stop(reader) == 0
    finally:
        if reader.poll() is None:
            reader.kill()


def test_bad_settings_fail_fast_with_the_way_out(fresh_kafka, registry_url, postgres, shop_db, tmp_path):
    from tests.flowkit import cli

    env = reader_env(tmp_path, fresh_kafka, registry_url, shop_db)
    missing_table = cli(env, "cdc", "--tables", "public.nope", ok=False)
    assert missing_table.returncode == 2 and "table public.nope does not exist" in missing_table.stderr
    no_dsn = cli({**env, "STREAMML_CDC_DSN": ""}, "cdc", ok=False)
    assert no_dsn.returncode == 2 and "--dsn" in no_dsn.stderr
    wrong_db = cli({**env, "STREAMML_CDC_CONNECT_TIMEOUT_S": "1"}, "cdc", "--dsn", postgres.dsn("nodb"), ok=False)
    assert wrong_db.returncode == 2 and "cannot reach PostgreSQL" in wrong_db.stderr and "nodb" in wrong_db.stderr


def test_column_types_round_trip_through_text_output(fresh_kafka, registry_url, shop_db, tmp_path):
    """Values as PostgreSQL prints them in the snapshot (::text) and in pgoutput decode to the same Avro values."""
    sql(shop_db, "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
        """CREATE TABLE kinds (id bigint PRIMARY KEY, b boolean, i2 smallint, i4 integer, f4 real, f8 double precision,
           n numeric(12, 3), ts timestamp, tz timestamptz, d date, by bytea, u uuid, j jsonb, a integer[],
           m mood, t text, inf timestamptz)""",
        """INSERT INTO kinds VALUES (1, true, -3, 2147483647, 1.5, 'NaN', 1234.567, '2026-11-23 10:00:00.25',
           '2026-11-23 10:00:00.125+05:30', '1999-12-31', '\\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
           '{"k": [1, 2]}', '{1,2,3}', 'happy', 'ünïcode ✓', 'infinity')""",
        "INSERT INTO kinds (id) VALUES (2)")
    provision(fresh_kafka)
    reader = start_reader(reader_env(tmp_path, fresh_kafka, registry_url, shop_db,
                                     STREAMML_CDC_TABLES="public.kinds"), tmp_path / "cdc.log", shop_db)
    try:
        sql(shop_db, "UPDATE kinds SET i4 = i4 - 1 WHERE id = 1")  # the same row again, now through pgoutput
        registry = RegistryClient(registry_url)
        latest = registry.latest("cdc.shop.kinds-value")
        assert latest is not None
        writer = AvroCodec(latest[2])
        from tests.flowkit import _consume_all

        records = [writer.decode(split_frame(m.value())[1]) for m in _consume_all(fresh_kafka, ["cdc.shop.kinds"], 3, 30)]
        assert len(records) == 3
        snap = next(r["after"] for r in records if r["op"] == "r" and r["after"]["id"] == 1)
        live = next(r["after"] for r in records if r["op"] == "u")
        assert {k: v for k, v in live.items() if k != "f8"} == {k: v for k, v in snap.items() if k != "f8"} | {
            "i4": 2147483646}
        assert snap["b"] is True and snap["i2"] == -3 and snap["f4"] == 1.5 and snap["f8"] != snap["f8"]  # NaN
        assert snap["n"] == 1234.567 and snap["ts"] == 1_795_428_000_250 and snap["tz"] == 1_795_408_200_125
        assert snap["d"] == 10956 and snap["by"] == b"\x00\xff" and snap["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        assert snap["j"] == '{"k": [1, 2]}' and snap["a"] == "{1,2,3}" and snap["m"] == "happy"
        assert snap["t"] == "ünïcode ✓" and snap["inf"] is None  # infinity has no epoch-ms form: null, counted
        empty = next(r["after"] for r in records if r["after"]["id"] == 2)
        assert all(v is None for k, v in empty.items() if k != "id")
        enum = next(f for f in json.loads(latest[2])["fields"][0]["type"][1]["fields"] if f["name"] == "m")
        assert enum["type"][1]["symbols"] == ["sad", "ok", "happy"]
        assert stop(reader) == 0
    finally:
        if reader.poll() is None:
            reader.kill()


def test_unchanged_toasted_values_come_from_the_old_row_or_are_null_and_counted(fresh_kafka, registry_url, shop_db,
                                                                                tmp_path):
    big = "x" * 20_000
    sql(shop_db, "CREATE TABLE docs (id int PRIMARY KEY, body text, n int)",
        "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL",  # stored out of line, so pgoutput sends 'u'
        "CREATE TABLE full_docs (id int PRIMARY KEY, body text, n int)",
        "ALTER TABLE full_docs ALTER COLUMN body SET STORAGE EXTERNAL", "ALTER TABLE full_docs REPLICA IDENTITY FULL")
    provision(fresh_kafka)
    port = free_port()
    reader = start_reader(reader_env(tmp_path, fresh_kafka, registry_url, shop_db, STREAMML_CDC_SNAPSHOT="never",
                                     STREAMML_CDC_TABLES="public.docs,public.full_docs",
                                     STREAMML_CDC_METRICS_PORT=str(port)), tmp_path / "cdc.log", shop_db)
    try:
        for table in ("docs", "full_docs"):
            sql(shop_db, f"INSERT INTO {table} VALUES (1, '{big}', 0)", f"UPDATE {table} SET n = 1 WHERE id = 1")
        registry = RegistryClient(registry_url)
        from tests.flowkit import _consume_all

        after = {}
        for m in _consume_all(fresh_kafka, ["cdc.shop.docs", "cdc.shop.full_docs"], 4, 30):
            record = AvroCodec(registry.schema_by_id(split_frame(m.value())[0])).decode(split_frame(m.value())[1])
            after[(m.topic(), record["op"])] = record["after"]
        assert after[("cdc.shop.docs", "c")]["body"] == big
        assert after[("cdc.shop.docs", "u")] == {"id": 1, "body": None, "n": 1}  # PostgreSQL did not send it
        assert after[("cdc.shop.full_docs", "u")] == {"id": 1, "body": big, "n": 1}  # taken from the old row
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'streamml_cdc_skipped_total{reason="unchanged_toast",table="public.docs"} 1.0' in text
        assert stop(reader) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
