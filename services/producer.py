"""The Python producer API: publish typed contract events as Confluent-framed Avro, keyed per the contract.

One idempotent librdkafka producer per process, a serde per topic, delivery outcomes counted per topic.
A record that does not fit its schema is refused before anything is sent; a full queue never drops one.
A broker without idempotent producing (Kafka < 0.11, or no IdempotentWrite ACL) fails with a `BrokerError`
saying to set STREAMML_KAFKA_ENABLE_IDEMPOTENCE=false; there is no silent fallback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, NoReturn

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.errors import BrokerError, SchemaError
from schemas.serde import SchemaSource, TopicSerde
from schemas.topics import TopicSpec
from streams.runtime.logging import get_logger
from streams.settings import Settings

log = get_logger(__name__)
OUTCOMES = ("queued", "delivered", "failed")  # the record counts `EventProducer.stats` keeps per topic

# Fatal errors meaning the cluster cannot do idempotent producing at all (no InitProducerId, no ACL).
NO_IDEMPOTENCE = frozenset({KafkaError._UNSUPPORTED_FEATURE, KafkaError.CLUSTER_AUTHORIZATION_FAILED})
_POLL_EVERY = 1000  # serve delivery callbacks at least this often while publishing
_FLUSH_SLICE_S = 0.1  # flush() waits in slices shorter than confluent-kafka's 200 ms chunks: see flush()

ProducerFactory = Callable[[dict[str, Any]], Any]


@dataclass
class TopicCounts:
    """Per-topic outcome counters: `queued` = accepted by `publish`, then `delivered` or `failed`."""

    queued: int = 0
    delivered: int = 0
    failed: int = 0
    bytes: int = 0


class EventProducer:
    """Publishes records of contract topics; use as a context manager so `close()` flushes.

    Idempotent by default; an explicit `enable.idempotence` (STREAMML_KAFKA_ENABLE_IDEMPOTENCE, or the
    config Mapping, or an override) wins. A fatal producer error is raised as `BrokerError` by
    `publish`/`poll`/`flush`/`close`; the producer then refuses further work: create a new one.
    Not thread-safe (counters and serdes are plain attributes): use one per thread.
    """

    def __init__(
        self,
        kafka: Settings | Mapping[str, Any],
        registry: SchemaSource,
        *,
        client_id: str = "streamml-producer",
        producer_factory: ProducerFactory = Producer,
        **overrides: Any,
    ):
        base = kafka.kafka_config() if isinstance(kafka, Settings) else dict(kafka)
        self._config: dict[str, Any] = {
            "client.id": client_id,
            "enable.idempotence": True,  # retries cannot duplicate or reorder (implies acks=all)
            "linger.ms": 5,  # small batches: low latency, still far fewer requests than one per record
            **base,
            **overrides,
        }
        self.idempotent = str(self._config["enable.idempotence"]).lower() in ("true", "1")
        self._registry = registry
        self._factory = producer_factory
        self._serdes: dict[str, TopicSerde] = {}
        self._counts: dict[str, TopicCounts] = {}
        self._since_poll = 0
        self._last_error: str | None = None
        self._fatal: str | None = None  # the BrokerError message once the producer failed fatally
        self._closed_with: int | None = None  # undelivered count once closed
        self._producer = self._new_producer()

    # --- publishing -------------------------------------------------------------------------------
    def publish(self, spec: TopicSpec, record: dict[str, Any], key: str | None = None,
                headers: list[tuple[str, bytes]] | None = None, *, wait: bool = True) -> bool:
        """Queue one record; `SchemaError` (naming topic and field) before anything is sent if it does not fit.

        The key defaults to the contract's key of the record (`spec.key_of`), as a UTF-8 string. While
        librdkafka's local queue is full it waits for room, or with `wait=False` returns False at once
        (nothing queued) so a caller that must never block can hold the record itself.
        """
        if self._closed_with is not None:
            raise BrokerError("this EventProducer is closed; create a new one to publish again")
        if self._fatal is not None:
            raise BrokerError(self._fatal)
        value = self.serialize(spec, record)
        key_text = spec.key_of(record) if key is None else key
        if not self._produce(spec.name, key_text.encode("utf-8"), value, headers, wait):
            return False
        counts = self._counts_of(spec.name)
        counts.queued += 1
        counts.bytes += len(value)
        self._since_poll += 1
        if self._since_poll >= _POLL_EVERY:
            self.poll(0)
        return True

    def serialize(self, spec: TopicSpec, record: dict[str, Any]) -> bytes:
        """The framed value of `record`; the registry is asked once per topic for the schema id."""
        try:
            return self.serde(spec).serialize(record)
        except SchemaError as exc:
            raise SchemaError(f"cannot publish to {spec.name!r}: {exc}") from exc

    def serde(self, spec: TopicSpec) -> TopicSerde:
        serde = self._serdes.get(spec.name)
        if serde is None:
            serde = self._serdes[spec.name] = TopicSerde(spec, self._registry)
        return serde

    def ensure_schemas(self, specs: Iterable[TopicSpec]) -> dict[str, int]:
        """Register the schemas of `specs` now, so a registry problem shows before the first publish."""
        return {spec.name: self.serde(spec).schema_id for spec in specs}

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        self._since_poll = 0
        try:
            return self._producer.poll(timeout_s)
        except Exception as exc:  # noqa: BLE001 - fatal errors may surface as SystemError, see _kafka_error
            self._raise_fatal(exc)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait until everything queued is delivered or failed; returns how many are still undelivered.

        `BrokerError` if the producer failed fatally (now or before): nothing queued will be delivered.
        """
        if self._closed_with is not None:
            return self._closed_with
        if self._fatal is not None:
            raise BrokerError(self._fatal)
        # confluent-kafka quirk: Producer.flush(t >= 0.2) calls rd_kafka_flush() in 200 ms chunks and goes on
        # after a fatal error, so the next chunk runs delivery callbacks with the fatal exception pending; it
        # then surfaces as a SystemError or is lost ("returned NULL without setting an exception"). One
        # shorter call is one rd_kafka_flush(), which stops at the fatal error: it raises cleanly.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                left = self._producer.flush(min(_FLUSH_SLICE_S, max(deadline - time.monotonic(), 0.0)))
            except Exception as exc:  # noqa: BLE001 - see poll()
                self._raise_fatal(exc)
            if left == 0 or time.monotonic() >= deadline:
                return left

    def close(self, timeout_s: float = 30.0) -> int:
        """Flush, then release librdkafka's threads; returns how many records could not be delivered in time
        (after a fatal error: how many were not acknowledged). Raises a fatal error only if none was raised yet.

        Releasing matters: the client's callbacks point back here, so without `close()` a dropped
        EventProducer keeps its broker connections until the cycle collector happens to run.
        """
        if self._closed_with is not None:
            return self._closed_with
        left: int | None = None
        try:
            if self._fatal is None:  # else the caller has had its BrokerError: do not raise it again here
                left = self.flush(timeout_s)
                if left:
                    log.warning("producer closed with undelivered records", undelivered=left, timeout_s=timeout_s,
                                bootstrap=self._config.get("bootstrap.servers"))
        finally:  # release even when flush raised
            self._closed_with = left if left is not None else self._unacknowledged()
            self._release(purge=self._closed_with > 0)
        return self._closed_with

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters per topic and in total, whether the producer is idempotent, and what is in flight."""
        topics = {name: asdict(c) for name, c in sorted(self._counts.items())}
        totals = {name: sum(t[name] for t in topics.values()) for name in OUTCOMES}
        in_flight = self._closed_with if self._closed_with is not None else len(self._producer)
        return {"idempotent": self.idempotent, "in_flight": in_flight,
                "last_error": self._last_error, **totals, "topics": topics}

    # --- librdkafka plumbing ------------------------------------------------------------------------
    def _release(self, purge: bool) -> None:
        """Close the librdkafka client; with `purge`, first give back what it still holds.

        Its close() flushes without a timeout, so a record left in a queue would hold it until
        delivery.timeout.ms (5 min by default): after a timed-out flush, or after a fatal error,
        whose own purge by librdkafka can miss records (seen under CPU load).
        """
        release = getattr(self._producer, "close", None)  # confluent-kafka >= 2.5
        if release is None:
            return
        try:
            if purge:
                self._producer.purge()  # queued and in flight, failed as _PURGE_*; blocks only for the purge
            release()  # serves the delivery reports; may report a fatal error once more
        except Exception as exc:  # noqa: BLE001 - see poll()
            if self._fatal is None:
                self._raise_fatal(exc)

    def _unacknowledged(self) -> int:
        return sum(c.queued - c.delivered for c in self._counts.values())

    def _new_producer(self) -> Any:
        config = {**self._config, "enable.idempotence": self.idempotent,
                  "on_delivery": self._on_delivery, "error_cb": self._on_error}
        try:
            return self._factory(config)
        except KafkaException as exc:
            raise BrokerError(f"invalid Kafka producer settings: {exc.args[0]}; check STREAMML_KAFKA_*") from exc

    def _produce(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None,
                 wait: bool = True) -> bool:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers)
                return True
            except BufferError:  # local queue full: let deliveries free room, then retry (nothing is dropped)
                if not wait:
                    return False
                self.poll(0.05)
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is not None and err.code() == KafkaError._FATAL:
                    self._raise_fatal(exc)
                raise BrokerError(f"cannot produce to {topic!r}: {err or exc}") from exc

    def _counts_of(self, topic: str) -> TopicCounts:
        counts = self._counts.get(topic)
        if counts is None:
            counts = self._counts[topic] = TopicCounts()
        return counts

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._counts_of(msg.topic() or "?").delivered += 1
            return
        topic = msg.topic() or "?"
        counts = self._counts_of(topic)
        counts.failed += 1
        self._last_error = f"{topic}: {err.str()}"
        if counts.failed == 1:  # one line per topic; the running count is in stats()
            log.warning("delivery failed", topic=topic, error=err.str(), code=err.name())

    def _on_error(self, err: KafkaError) -> None:
        # Non-fatal errors (broker down, timeouts) are retried by librdkafka; keep the latest for stats().
        # Fatal ones are raised by poll()/flush()/produce() instead and turned into BrokerError by _raise_fatal.
        self._last_error = err.str()

    def _raise_fatal(self, exc: Exception) -> NoReturn:
        """`BrokerError` naming the cause of a fatal producer error (and the fix, for idempotence).

        librdkafka gives back everything queued (failed deliveries, `_PURGE_QUEUE`); nothing is resent.
        """
        err = _kafka_error(exc)
        if err is None:
            raise exc  # not a Kafka error: an exception from our own code, keep it as it is
        if err.code() == KafkaError._FATAL:  # produce() only says "fatal": poll() tells the cause
            err = self._fatal_cause() or err
        self._last_error = err.str()
        bootstrap = self._config.get("bootstrap.servers")
        if self.idempotent and err.code() in NO_IDEMPOTENCE:
            fix = (f"the broker at {bootstrap} does not grant idempotent producing (it needs Kafka >= 0.11 "
                   "and, with ACLs, IdempotentWrite on the cluster): set STREAMML_KAFKA_ENABLE_IDEMPOTENCE=false")
        else:
            fix = f"check the broker at {bootstrap}, then create a new EventProducer"
        self._fatal = (f"Kafka producer failed fatally ({err.str()}) with {self._unacknowledged()} records "
                       f"not acknowledged; {fix}")
        raise BrokerError(self._fatal) from exc

    def _fatal_cause(self, wait_s: float = 2.0) -> KafkaError | None:
        """The error behind a bare `_FATAL`: an event that poll() raises, queued just after the flag is set."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                self._producer.poll(_FLUSH_SLICE_S)
            except Exception as exc:  # noqa: BLE001 - this call exists to catch the fatal error
                return _kafka_error(exc)
        return None


def _kafka_error(exc: BaseException) -> KafkaError | None:
    """The KafkaError behind `exc`, following the cause chain.

    A safety net for the confluent-kafka quirk described in `flush()` (seen with 2.16): if a delivery
    callback runs while the fatal `KafkaException` is pending, Python reports "<callback> returned a
    result with an exception set", a `SystemError` whose `__cause__` is that `KafkaException`.
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, KafkaException) and seen.args and isinstance(seen.args[0], KafkaError):
            return seen.args[0]
        seen = seen.__cause__ or seen.__context__
    return None
