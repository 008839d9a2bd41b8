"""Time arguments of the command line: ISO 8601, epoch milliseconds, or an age like `2h` (before now)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from schemas.errors import ConfigError
from streams.features.definitions import DAY_MS, HOUR_MS, MINUTE_MS

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_MS = {"s": 1000, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}


def parse_time(text: str | None, option: str) -> int | None:
    """Epoch ms of `text`; naive ISO times are UTC. None stays None."""
    if text is None or text == "":
        return None
    value = text.strip()
    if value.isdigit():
        return int(value)
    age = _AGE.match(value)
    if age:
        return int(time.time() * 1000 - float(age[1]) * _UNIT_MS[age[2]])
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a time: use ISO 8601 (2025-11-22T10:00Z), epoch milliseconds, "
                          "or an age such as 90m, 6h, 2d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)
