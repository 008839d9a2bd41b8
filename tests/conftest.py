"""Session fixtures: one real Tansu broker, one real Redis and (on demand) one PostgreSQL for the whole test run.

Tests that need isolation use unique topic names / Redis DB flushes, not separate servers.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import PostgresServer, ServerProcess, start_postgres, start_redis, start_tansu

# librdkafka defaults make a group join take ~23 s on Tansu; these make it ~3 s.
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def tansu(server_logs: Path) -> Iterator[ServerProcess]:
    server = start_tansu(server_logs)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tansu: ServerProcess) -> str:
    return f"127.0.0.1:{tansu.port}"


@pytest.fixture(scope="session")
def redis_server(server_logs: Path) -> Iterator[ServerProcess]:
    server = start_redis(server_logs)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: ServerProcess) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names, consumer groups and key prefixes."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def registry_url(tmp_path_factory: pytest.TempPathFactory, server_logs: Path) -> Iterator[str]:
    """Our embedded schema registry (`python -m services.registry`) on a free port."""
    import os
    import subprocess
    import sys

    import httpx

    from tests.servers import free_port, wait_for

    port = free_port()
    home = tmp_path_factory.mktemp("registry-home")
    env = {**os.environ, "STREAMML_HOME": str(home), "STREAMML_REGISTRY_PORT": str(port)}
    log = open(server_logs / f"registry-{port}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "services.registry"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 30, "schema registry")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def fresh_kafka(server_logs: Path) -> Iterator[str]:
    """A broker of the test's own: the contract's topic names are fixed, so isolation means a new broker."""
    server = start_tansu(server_logs)
    yield f"127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture
def hangable_broker(server_logs: Path) -> Iterator[ServerProcess]:
    """A broker of the test's own that the test may SIGSTOP (`pause`); resumed and stopped afterwards."""
    server = start_tansu(server_logs)
    yield server
    server.resume()
    server.stop()


_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_db_url(redis_server: ServerProcess) -> Iterator[str]:
    """A Redis database of the test's own (DB 1..15 on the session server), flushed before use."""
    import redis

    url = f"redis://127.0.0.1:{redis_server.port}/{next(_redis_dbs)}"
    redis.Redis.from_url(url).flushdb()
    yield url


@pytest.fixture(scope="session")
def postgres(server_logs: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server with wal_level=logical and trust auth for `postgres` (incl. replication)."""
    server = start_postgres(server_logs)
    yield server
    server.stop()


@pytest.fixture
def shop_db(postgres: PostgresServer) -> str:
    """DSN of a freshly created database `shop` (its replication slots dropped, the old one dropped)."""
    return postgres.recreate_database("shop")
