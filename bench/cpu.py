"""The machine's CPU time during a benchmark phase, from /proc/stat: how much was idle, and how much the
hypervisor stole (time a vCPU was runnable but the host ran something else).

On this 2-vCPU VM steal swung between 0% and ~40% of the machine's time from one minute to the next
while benchmarks ran, and a latency tail follows it; each phase reports it so a run can be judged.
Named processes can be followed too: their CPU in percent of one core over the window.
"""

from __future__ import annotations

import os
from pathlib import Path

_STAT = Path("/proc/stat")
_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _times() -> list[int] | None:
    try:
        return [int(v) for v in _STAT.read_text().split("\n", 1)[0].split()[1:len(_FIELDS) + 1]]
    except (OSError, ValueError):
        return None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class CpuWindow:
    """`with CpuWindow(tansu=pid) as cpu: ...` then `cpu.shares()`: percent of all CPUs' time that was idle
    and stolen, and each named process's CPU in percent of one core."""

    def __init__(self, **pids: int):
        self._pids = pids

    def __enter__(self) -> CpuWindow:
        self._start, self._end = _times(), None
        self._cpu_s = {name: process_cpu_s(pid) for name, pid in self._pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = _times()
        self._cpu_s = {name: (start, process_cpu_s(self._pids[name])) for name, start in self._cpu_s.items()}

    def shares(self) -> dict[str, float | None]:
        if not self._start or not self._end:
            return {"idle_pct": None, "steal_pct": None}
        delta = [b - a for a, b in zip(self._start, self._end, strict=True)]
        total = sum(delta) or 1
        out: dict[str, float | None] = {"idle_pct": round(100 * delta[_FIELDS.index("idle")] / total, 1),
                                        "steal_pct": round(100 * delta[_FIELDS.index("steal")] / total, 1)}
        # /proc/stat sums all CPUs: its total over the window is the window's length times the CPU count.
        window_s = total / (os.cpu_count() or 1) / os.sysconf("SC_CLK_TCK")
        for name, (start, end) in self._cpu_s.items():
            out[f"{name}_pct"] = None if start is None or end is None else round(100 * (end - start) / window_s)
        return out
