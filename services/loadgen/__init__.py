"""The load generator: a seeded simulation of a shop's clickstream, CDC changes and labels.

`generator` is pure (no I/O); `run` publishes it to Kafka at a rate through `services.producer`.
"""

from services.loadgen.config import Funnel, LoadConfig
from services.loadgen.generator import Event, GeneratorStats, LoadGenerator, generate

__all__ = ["Event", "Funnel", "GeneratorStats", "LoadConfig", "LoadGenerator", "generate"]
