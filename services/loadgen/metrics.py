"""Prometheus view of a load run, read from the producer's and generator's own counters at scrape time
(nothing on the publishing path)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.loadgen.generator import LoadGenerator
from services.producer import OUTCOMES, EventProducer


class LoadCollector(Collector):
    """`streamml_loadgen_*` of one run; `register` it while the run lasts, `unregister` after."""

    def __init__(self, producer: EventProducer, generator: LoadGenerator, target_rate: float):
        self._producer, self._generator, self._rate = producer, generator, target_rate

    def collect(self) -> Iterator[Metric]:
        stats = self._producer.stats()
        records = CounterMetricFamily("streamml_loadgen_records", "Records handed to the producer (queued), "
                                      "acknowledged by the broker (delivered) or failed, per topic.",
                                      labels=["topic", "outcome"])
        for topic, counts in stats["topics"].items():
            for outcome in OUTCOMES:
                records.add_metric([topic, outcome], counts.get(outcome, 0))
        yield records
        yield GaugeMetricFamily("streamml_loadgen_in_flight_records", "Records queued and not yet acknowledged.",
                                value=stats["in_flight"])
        yield CounterMetricFamily("streamml_loadgen_late_events", "Clickstream events generated late on purpose "
                                  "(--late-fraction).", value=self._generator.stats.late)
        yield GaugeMetricFamily("streamml_loadgen_target_rate_events_per_second",
                                "Events/s asked for across topics (0 = as fast as possible).", value=self._rate)

    def register(self) -> None:
        REGISTRY.register(self)

    def unregister(self) -> None:
        REGISTRY.unregister(self)
