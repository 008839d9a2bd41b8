"""Prometheus metrics of the ops service: exported consumer lag and target health, plus its own loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.ops.views import LAG_MESSAGES, LAG_SECONDS, TARGET_UP
from streams.kafka.lag import PartitionLag

COLLECT_SECONDS = Histogram("streamml_ops_collect_seconds", "One round: scrape every target and measure lag.",
                            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
ERRORS = Counter("streamml_ops_errors_total", "Failed scrapes or lag probes, by what failed.", ["source"])


class LatestState(Collector):
    """Exposes the latest round's lag and target health: a group or target that is gone disappears."""

    def __init__(self, state: Callable[[], tuple[list[PartitionLag], dict[str, bool]]]):
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag, targets = self._state()
        labels = ["group", "topic", "partition"]
        messages = GaugeMetricFamily(LAG_MESSAGES, "Messages between the group's committed offset and the "
                                     "high watermark.", labels=labels)
        seconds = GaugeMetricFamily(LAG_SECONDS, "Age of the oldest unprocessed record (0 when caught up).",
                                    labels=labels)
        for row in lag:
            key = [row.group, row.topic, str(row.partition)]
            messages.add_metric(key, row.messages)
            seconds.add_metric(key, row.seconds)
        up = GaugeMetricFamily(TARGET_UP, "1 if the last scrape of this process's /metrics succeeded.",
                               labels=["target"])
        for name, ok in sorted(targets.items()):
            up.add_metric([name], 1.0 if ok else 0.0)
        yield from (messages, seconds, up)
