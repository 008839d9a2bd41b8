"""Pid-file supervision: start detached, find, stop; never signal a process we did not start."""

from __future__ import annotations

import json
import subprocess
import sys

from services.stack.supervisor import ProcessSpec, Supervisor


def _sleeper(name: str) -> ProcessSpec:
    return ProcessSpec(name, [sys.executable, "-c", "import time; time.sleep(60)"])


def test_start_records_and_stop_terminates(tmp_path):
    sup = Supervisor(tmp_path / "run", tmp_path / "logs")
    record = sup.start(_sleeper("a"))
    assert sup.running("a") == record
    assert [r.name for r in sup.records()] == ["a"]
    assert sup.stop("a") is True
    assert sup.running("a") is None and sup.records() == []
    assert sup.stop("a") is False


def test_a_recycled_pid_is_not_ours(tmp_path):
    sup = Supervisor(tmp_path / "run", tmp_path / "logs")
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = sup.start(_sleeper("b"))
        sup.stop("b")
        # Forge a pid file that points at a live process with another start time.
        forged = {**record.__dict__, "pid": stranger.pid, "start_ticks": record.start_ticks + 1}
        (tmp_path / "run" / "b.json").write_text(json.dumps(forged))
        assert sup.running("b") is None
        assert sup.stop("b") is False
        assert stranger.poll() is None  # untouched
    finally:
        stranger.kill()
        stranger.wait()


def test_sigterm_ignoring_process_is_killed(tmp_path):
    sup = Supervisor(tmp_path / "run", tmp_path / "logs")
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    sup.start(ProcessSpec("stubborn", [sys.executable, "-c", code]))
    import time

    time.sleep(0.5)
    assert sup.stop("stubborn", timeout_s=1.0) is True
    assert sup.records() == []
