"""The machine's CPU time during a benchmark phase, from /proc/stat: how much was idle, and how much the
hypervisor stole (time a vCPU was runnable but the host ran something else).

On this 2-vCPU VM steal swung between 0% and ~40% of the machine's time from one minute to the next
while benchmarks ran, and a latency tail follows it; each phase reports it so a run can be judged.
"""

from __future__ import annotations

from pathlib import Path

_STAT = Path("/proc/stat")
_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _times() -> list[int] | None:
    try:
        return [int(v) for v in _STAT.read_text().split("\n", 1)[0].split()[1:len(_FIELDS) + 1]]
    except (OSError, ValueError):
        return None


class CpuWindow:
    """`with CpuWindow() as cpu: ...` then `cpu.shares()`: percent of all CPUs' time that was idle and stolen."""

    def __enter__(self) -> CpuWindow:
        self._start, self._end = _times(), None
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = _times()

    def shares(self) -> dict[str, float | None]:
        if not self._start or not self._end:
            return {"idle_pct": None, "steal_pct": None}
        delta = [b - a for a, b in zip(self._start, self._end, strict=True)]
        total = sum(delta) or 1
        return {"idle_pct": round(100 * delta[_FIELDS.index("idle")] / total, 1),
                "steal_pct": round(100 * delta[_FIELDS.index("steal")] / total, 1)}
