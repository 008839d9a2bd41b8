"""The PostgreSQL fixtures: a real server with logical replication, and a `shop` database made anew per test."""

from __future__ import annotations

import select
import time

import psycopg2
import psycopg2.extras
import pytest

from tests.servers import PostgresServer

pytestmark = pytest.mark.integration


def test_server_has_logical_wal(postgres: PostgresServer) -> None:
    conn = psycopg2.connect(postgres.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW wal_level")
            assert cur.fetchone() == ("logical",)
            cur.execute("SELECT current_user, inet_server_port()")
            assert cur.fetchone() == ("postgres", postgres.port)
    finally:
        conn.close()


def _read_until_commit(cur, timeout_s: float) -> list[bytes]:
    """pgoutput message types (first payload byte) up to and including the first Commit."""
    kinds: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = cur.read_message()
        if msg is None:
            select.select([cur], [], [], max(0.0, min(1.0, deadline - time.monotonic())))
            continue
        kinds.append(msg.payload[:1])
        if msg.payload[:1] == b"C":
            cur.send_feedback(flush_lsn=msg.data_start)
            return kinds
    raise AssertionError(f"no Commit within {timeout_s}s; saw {kinds}")


@pytest.mark.parametrize("round_", [1, 2])
def test_logical_replication_round_trip(shop_db: str, round_: int) -> None:
    """pgoutput streams B, R, I x N, C for one transaction; round 2 finds round 1's slot and still gets a new db."""
    conn = psycopg2.connect(shop_db)
    conn.autocommit = True
    repl = psycopg2.connect(shop_db, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_class WHERE relname = 't'")
            assert cur.fetchone() == (0,), "shop must be a fresh database"
            cur.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            cur.execute("CREATE PUBLICATION p FOR TABLE t")

        rcur = repl.cursor()
        rcur.create_replication_slot("s", output_plugin="pgoutput")

        rows = 3
        with conn.cursor() as cur:  # one transaction: BEGIN ... COMMIT
            cur.execute("BEGIN")
            cur.executemany("INSERT INTO t VALUES (%s, %s)", [(i, f"v{i}") for i in range(rows)])
            cur.execute("COMMIT")

        rcur.start_replication(
            slot_name="s", decode=False, options={"proto_version": "1", "publication_names": "p"}
        )
        kinds = _read_until_commit(rcur, timeout_s=8)
        assert kinds == [b"B", b"R"] + [b"I"] * rows + [b"C"]
    finally:
        repl.close()  # the slot `s` stays behind: the next round's shop_db must drop it
        conn.close()


def test_recreate_drops_an_active_slot(postgres: PostgresServer, shop_db: str) -> None:
    """A walsender still streaming from a slot of `shop` is terminated, its slot dropped, the db made anew."""
    conn = psycopg2.connect(shop_db)
    conn.autocommit = True
    repl = psycopg2.connect(shop_db, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE PUBLICATION busy_pub FOR ALL TABLES")
        conn.close()
        rcur = repl.cursor()
        rcur.create_replication_slot("busy", output_plugin="pgoutput")
        rcur.start_replication(
            slot_name="busy", decode=False, options={"proto_version": "1", "publication_names": "busy_pub"}
        )
        assert postgres.recreate_database("shop") == shop_db
        admin = psycopg2.connect(postgres.dsn())
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_replication_slots WHERE database = 'shop'")
            assert cur.fetchone() == (0,)
        admin.close()
        fresh = psycopg2.connect(shop_db)
        with fresh.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_publication")
            assert cur.fetchone() == (0,)
        fresh.close()
    finally:
        conn.close()
        repl.close()
