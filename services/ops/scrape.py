"""Fetch and parse the Prometheus text exposition of the processes the ops service watches."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from services.ops.history import SeriesKey, series_key


def parse(text: str, keep: set[str], target: str) -> dict[SeriesKey, float]:
    """Samples whose name is in `keep`, each labelled with the `target` it came from."""
    out: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in keep and not math.isnan(sample.value):
                out[series_key(sample.name, {**sample.labels, "target": target})] = float(sample.value)
    return out


def fetch(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (configured http URLs)
        return response.read().decode("utf-8", "replace")


def stack_targets(records: Iterable) -> dict[str, str]:
    """name -> /metrics URL of every embedded-stack process that serves metrics (from its pid records)."""
    return {r.name: f"http://127.0.0.1:{r.metrics_port}/metrics" for r in records if r.metrics_port}
