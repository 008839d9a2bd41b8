"""Real servers for tests: Tansu (Kafka API) and Redis on free loopback ports, torn down afterwards."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from services.stack.binaries import redis_argv, tansu_argv
from services.stack.health import port_open, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """`wait_until` that tolerates a failing probe and raises when time runs out."""

    def safe() -> bool:
        try:
            return bool(check())
        except Exception:
            return False

    if not wait_until(safe, timeout_s, interval_s=0.05):
        raise TimeoutError(f"{what} not ready after {timeout_s}s")


class ServerProcess:
    """A child process with a log file; stops with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], port: int, log_dir: Path):
        self.name, self.argv, self.port = name, argv, port
        self.log_path = log_dir / f"{name}-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20.0) -> ServerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), timeout_s, f"{self.name} on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(19)  # SIGSTOP

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(18)  # SIGCONT


def start_tansu(log_dir: Path) -> ServerProcess:
    port = free_port()
    server = ServerProcess("tansu", tansu_argv(port), port, log_dir).start()
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
    wait_for(lambda: admin.list_topics(timeout=1) is not None, 20, "tansu metadata")
    return server


def start_redis(log_dir: Path, password: str | None = None) -> ServerProcess:
    port = free_port()
    data = log_dir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    return ServerProcess("redis", redis_argv(port, data, password), port, log_dir).start()
