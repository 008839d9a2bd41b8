"""Start, find and stop the embedded stack's processes through pid files under `$STREAMML_HOME/run`.

Only processes this supervisor started are ever signalled: a pid file records the pid and the
process start time, so a recycled pid is never mistaken for ours.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from schemas.errors import StreammlError


class StackError(StreammlError):
    """A stack process could not be started, found or stopped."""


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one process of the stack and where it listens."""

    name: str
    argv: list[str]
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    health_url: str | None = None  # HTTP endpoint answering 200 when ready
    metrics_port: int | None = None


@dataclass
class ProcessRecord:
    """What a pid file holds."""

    name: str
    pid: int
    start_ticks: int
    argv: list[str]
    port: int | None
    health_url: str | None
    metrics_port: int | None
    log: str
    started_at: float


def _start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot (field 22 of /proc/pid/stat); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # zombie: exited, not yet reaped
        return None
    return int(fields[19])


class Supervisor:
    """Keeps pid files and logs of the processes it starts."""

    def __init__(self, run_dir: Path, log_dir: Path):
        self.run_dir, self.log_dir = run_dir, log_dir

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def record(self, name: str) -> ProcessRecord | None:
        try:
            return ProcessRecord(**json.loads(self._pid_file(name).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def records(self) -> list[ProcessRecord]:
        if not self.run_dir.exists():
            return []
        out = [self.record(p.stem) for p in sorted(self.run_dir.glob("*.json"))]
        return sorted((r for r in out if r is not None), key=lambda r: r.started_at)

    def is_alive(self, record: ProcessRecord) -> bool:
        return _start_ticks(record.pid) == record.start_ticks

    def running(self, name: str) -> ProcessRecord | None:
        record = self.record(name)
        return record if record is not None and self.is_alive(record) else None

    def start(self, spec: ProcessSpec) -> ProcessRecord:
        """Start `spec` detached (own session, survives the CLI), logging to `logs/<name>.log`."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    spec.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **spec.env},
                    start_new_session=True,
                )
            except OSError as exc:
                raise StackError(f"cannot start {spec.name} ({spec.argv[0]}): {exc}") from exc
        ticks = None
        for _ in range(50):
            ticks = _start_ticks(proc.pid)
            if ticks is not None:
                break
            time.sleep(0.01)
        if ticks is None:
            raise StackError(f"{spec.name} exited at once; see {log_path}")
        record = ProcessRecord(spec.name, proc.pid, ticks, spec.argv, spec.port, spec.health_url,
                               spec.metrics_port, str(log_path), time.time())
        self._pid_file(spec.name).write_text(json.dumps(asdict(record)))
        return record

    def stop(self, name: str, timeout_s: float = 15.0) -> bool:
        """SIGTERM the process (then SIGKILL after `timeout_s`); True if it was running."""
        record = self.record(name)
        if record is None:
            return False
        was_alive = self.is_alive(record)
        if was_alive:
            _signal(record.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while self.is_alive(record) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.is_alive(record):
                _signal(record.pid, signal.SIGKILL)
                while self.is_alive(record) and time.monotonic() < deadline + 5:
                    time.sleep(0.05)
        self._pid_file(name).unlink(missing_ok=True)
        return was_alive


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the whole session: workers a process spawned go too
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
