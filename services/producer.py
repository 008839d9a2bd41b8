"""The Python producer API: publish typed contract events as Confluent-framed Avro, keyed per the contract.

One idempotent librdkafka producer per process, a serde per topic, delivery outcomes counted per topic.
A record that does not fit its schema is refused before anything is sent; a full queue never drops one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.errors import BrokerError, SchemaError
from schemas.serde import SchemaSource, TopicSerde
from schemas.topics import TopicSpec
from streams.runtime.logging import get_logger
from streams.settings import Settings

log = get_logger(__name__)

# Fatal errors meaning the cluster cannot do idempotent producing at all (no InitProducerId, no ACL).
NO_IDEMPOTENCE = frozenset({KafkaError._UNSUPPORTED_FEATURE, KafkaError.CLUSTER_AUTHORIZATION_FAILED})
# Delivery errors meaning "librdkafka gave the record back" (purge on a fatal error), not "refused".
_GIVEN_BACK = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT, KafkaError._FATAL})
_POLL_EVERY = 1000  # serve delivery callbacks at least this often while publishing

ProducerFactory = Callable[[dict[str, Any]], Any]
Outgoing = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]


@dataclass
class TopicCounts:
    """Per-topic outcome counters: `queued` = accepted by `publish`, then `delivered` or `failed`."""

    queued: int = 0
    delivered: int = 0
    failed: int = 0
    bytes: int = 0


class EventProducer:
    """Publishes records of contract topics; use as a context manager so `close()` flushes.

    Idempotence is confirmed by the first successful delivery (librdkafka needs a producer id from
    InitProducerId before anything is written). Until then every record is also kept here, so a
    cluster without idempotent producing costs a warning and a resend, never a lost record.
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
        self._unconfirmed: list[Outgoing] | None = [] if self.idempotent else None
        self._since_poll = 0
        self._last_error: str | None = None
        self._closed_with: int | None = None  # undelivered count once closed
        self._producer = self._new_producer()

    # --- publishing -------------------------------------------------------------------------------
    def publish(self, spec: TopicSpec, record: dict[str, Any], key: str | None = None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record; `SchemaError` (naming topic and field) before anything is sent if it does not fit.

        The key defaults to the contract's key of the record (`spec.key_of`), as a UTF-8 string.
        """
        if self._closed_with is not None:
            raise BrokerError("this EventProducer is closed; create a new one to publish again")
        value = self.serialize(spec, record)
        key_text = spec.key_of(record) if key is None else key
        outgoing = (spec.name, key_text.encode("utf-8"), value, headers)
        self._produce(outgoing)
        if self._unconfirmed is not None:
            self._unconfirmed.append(outgoing)
        counts = self._counts_of(spec.name)
        counts.queued += 1
        counts.bytes += len(value)
        self._since_poll += 1
        if self._since_poll >= _POLL_EVERY:
            self.poll(0)

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
            self._on_fatal(exc)
            return 0

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait until everything queued is delivered or failed; returns how many are still undelivered."""
        if self._closed_with is not None:
            return self._closed_with
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_s = max(deadline - time.monotonic(), 0.0)
            try:
                return self._producer.flush(remaining_s)
            except Exception as exc:  # noqa: BLE001 - see poll()
                self._on_fatal(exc)  # returns only after falling back and resending: flush again

    def close(self, timeout_s: float = 30.0) -> int:
        """Flush, then release librdkafka's threads; returns how many records could not be delivered in time.

        Releasing matters: the client's callbacks point back here, so without `close()` a dropped
        EventProducer keeps its broker connections until the cycle collector happens to run.
        """
        if self._closed_with is not None:
            return self._closed_with
        left = self.flush(timeout_s)
        if left:
            log.warning("producer closed with undelivered records", undelivered=left, timeout_s=timeout_s,
                        bootstrap=self._config.get("bootstrap.servers"))
        self._closed_with = left
        release = getattr(self._producer, "close", None)  # confluent-kafka >= 2.5
        if release is not None:
            release()
        return left

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters per topic and in total, whether the producer is idempotent, and what is in flight."""
        topics = {name: asdict(c) for name, c in sorted(self._counts.items())}
        totals = {name: sum(t[name] for t in topics.values()) for name in ("queued", "delivered", "failed")}
        in_flight = self._closed_with if self._closed_with is not None else len(self._producer)
        return {"idempotent": self.idempotent, "in_flight": in_flight,
                "last_error": self._last_error, **totals, "topics": topics}

    # --- librdkafka plumbing ------------------------------------------------------------------------
    def _new_producer(self) -> Any:
        config = {**self._config, "enable.idempotence": self.idempotent,
                  "on_delivery": self._on_delivery, "error_cb": self._on_error}
        try:
            return self._factory(config)
        except KafkaException as exc:
            raise BrokerError(f"invalid Kafka producer settings: {exc.args[0]}; check STREAMML_KAFKA_*") from exc

    def _produce(self, outgoing: Outgoing) -> None:
        topic, key, value, headers = outgoing
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers)
                return
            except BufferError:  # local queue full: let deliveries free room, then retry (nothing is dropped)
                self.poll(0.05)
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is not None and err.code() == KafkaError._FATAL:
                    self._on_fatal(exc)  # falls back (then retry) or raises
                    continue
                raise BrokerError(f"cannot produce to {topic!r}: {err or exc}") from exc

    def _counts_of(self, topic: str) -> TopicCounts:
        counts = self._counts.get(topic)
        if counts is None:
            counts = self._counts[topic] = TopicCounts()
        return counts

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._counts_of(msg.topic() or "?").delivered += 1
            self._unconfirmed = None  # a producer id was granted: idempotence works, stop keeping copies
            return
        if self._unconfirmed is not None and err.code() in _GIVEN_BACK:
            return  # resent from `_unconfirmed` by the fallback
        topic = msg.topic() or "?"
        counts = self._counts_of(topic)
        counts.failed += 1
        self._last_error = f"{topic}: {err.str()}"
        if counts.failed == 1:  # one line per topic; the running count is in stats()
            log.warning("delivery failed", topic=topic, error=err.str(), code=err.name())

    def _on_error(self, err: KafkaError) -> None:
        # Non-fatal errors (broker down, timeouts) are retried by librdkafka; keep the latest for stats().
        # Fatal ones are raised by poll()/flush()/produce() instead and handled by _on_fatal.
        self._last_error = err.str()

    def _on_fatal(self, exc: Exception) -> None:
        """Fall back to a non-idempotent producer if that is the problem; otherwise raise `BrokerError`."""
        err = _kafka_error(exc)
        if err is None:
            raise exc
        if err.code() == KafkaError._FATAL:  # produce() only says "fatal": poll() tells the cause
            err = self._fatal_cause() or err
        self._last_error = err.str()
        if self._unconfirmed is not None:
            # Fatal before any record was written: the producer id was refused (NO_IDEMPOTENCE when
            # the broker says why), so idempotence is what does not work here.
            log.warning("broker does not support idempotent producing; falling back to acks=all with retries "
                        "(a retry may then duplicate a record: consumers dedupe on event_id)",
                        error=err.str(), unsupported=err.code() in NO_IDEMPOTENCE)
            resend, self._unconfirmed = self._unconfirmed, None
            self.idempotent = False
            self._producer = self._new_producer()
            for outgoing in resend:
                self._produce(outgoing)
            return
        in_flight = len(self._producer)
        raise BrokerError(
            f"Kafka producer failed fatally ({err.str()}) with {in_flight} records not yet acknowledged; "
            f"check the broker at {self._config.get('bootstrap.servers')} and restart the producer"
        ) from exc

    def _fatal_cause(self) -> KafkaError | None:
        try:
            self._producer.poll(0)
        except Exception as exc:  # noqa: BLE001 - this call exists to catch the fatal error
            return _kafka_error(exc)
        return None


def _kafka_error(exc: BaseException) -> KafkaError | None:
    """The KafkaError behind `exc`, following the cause chain.

    confluent-kafka 2.16 raises a fatal error from flush()/poll() as a `SystemError` caused by the
    `KafkaException` when delivery callbacks run in the same call (seen on Tansu).
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, KafkaException) and seen.args and isinstance(seen.args[0], KafkaError):
            return seen.args[0]
        seen = seen.__cause__ or seen.__context__
    return None
