"""Helpers for tests against PostgreSQL: the shop tables (as the CDC contract expects them) and plain SQL."""

from __future__ import annotations

from pathlib import Path

import psycopg2

DDL = (Path(__file__).resolve().parents[1] / "deploy" / "postgres" / "shop.sql").read_text()
SIGNUP = "2024-03-01 12:00:00+00"
SIGNUP_MS = 1_709_294_400_000


def sql(dsn: str, *statements: str) -> None:
    """Run `statements` in one transaction."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def query(dsn: str, statement: str) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall()
    finally:
        conn.close()


def user(uid: str, tier: str = "free", country: str = "DE") -> str:
    return f"INSERT INTO users VALUES ('{uid}', '{tier}', '{country}', '{SIGNUP}', false)"


def item(iid: str, category: str = "books", price: float = 10.0) -> str:
    return f"INSERT INTO items VALUES ('{iid}', '{category}', {price}, 'acme')"
