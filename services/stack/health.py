"""Readiness probes for the stack's processes: TCP, Kafka metadata, Redis PING, HTTP 200."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def kafka_ok(kafka_config: dict) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({**kafka_config, "socket.timeout.ms": 1000, "log_level": 0}).list_topics(timeout=1.5)
        return True
    except Exception:
        return False


def redis_ok(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except Exception:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll `check` until it is true or `timeout_s` passes; returns the last result."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return check()
