"""Dead letters: a record that cannot be decoded or validated goes to `<topic>.dlq`, never dropped.

The original key and value bytes are kept as they were; the reason travels in headers, so ops can
inspect with any Kafka client and re-drive the record after a fix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from schemas.errors import BrokerError, DecodeError
from schemas.topics import dlq_topic
from streams.runtime.logging import get_logger

log = get_logger(__name__)

H_REASON = "streamml.error.reason"
H_DETAIL = "streamml.error.detail"
H_TOPIC = "streamml.source.topic"
H_PARTITION = "streamml.source.partition"
H_OFFSET = "streamml.source.offset"
H_TIMESTAMP = "streamml.source.timestamp"
H_FAILED_AT = "streamml.error.at"
H_DROPPED = "streamml.error.dropped"  # "value" or "key,value": bytes too big for the DLQ, left out
_MAX_DETAIL = 1000


@dataclass(frozen=True)
class DeadLetter:
    """A rejected record and why: what goes to the DLQ."""

    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str
    timestamp_ms: int | None = None

    @classmethod
    def from_error(cls, err: DecodeError, key: bytes | None, value: bytes | None, timestamp_ms: int | None = None) -> DeadLetter:
        return cls(err.topic or "", err.partition, err.offset, key, value, err.reason, err.detail, timestamp_ms)

    def headers(self) -> list[tuple[str, bytes]]:
        out = [
            (H_REASON, self.reason.encode()),
            (H_DETAIL, self.detail[:_MAX_DETAIL].encode("utf-8", "replace")),
            (H_TOPIC, self.topic.encode()),
            (H_FAILED_AT, str(int(time.time() * 1000)).encode()),
        ]
        if self.partition is not None:
            out.append((H_PARTITION, str(self.partition).encode()))
        if self.offset is not None:
            out.append((H_OFFSET, str(self.offset).encode()))
        if self.timestamp_ms is not None:
            out.append((H_TIMESTAMP, str(self.timestamp_ms).encode()))
        return out


class DeadLetterPublisher:
    """Publishes dead letters with an idempotent producer; counts them per reason via `on_sent`.

    Delivery is checked: `ensure_delivered` blocks until Kafka has every letter and raises if it refused
    one, so a caller can make it a condition of committing past the records the letters stand for.
    """

    def __init__(self, producer: Producer, on_sent: Callable[[DeadLetter], Any] | None = None):
        self._producer = producer
        self._on_sent = on_sent
        self._refused: list[str] = []

    def publish(self, letter: DeadLetter) -> None:
        headers = letter.headers()
        # A record near the size limit no longer fits once the headers are added: rather than stop the
        # flow (and again on every restart), dead-letter it without its bytes; position headers still
        # say where to re-read it.
        for key, value, dropped in ((letter.key, letter.value, None), (letter.key, None, "value"),
                                    (None, None, "key,value")):
            extra = [] if dropped is None else [(H_DROPPED, dropped.encode())]
            try:
                self._producer.produce(dlq_topic(letter.topic), key=key, value=value, headers=[*headers, *extra],
                                       on_delivery=self._delivered)
                break
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or dropped == "key,value":
                    raise
        self._producer.poll(0)
        if self._on_sent is not None:
            self._on_sent(letter)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for delivery; returns the number of letters still undelivered (for shutdown paths)."""
        return self._producer.flush(timeout_s)

    def ensure_delivered(self, warn_after_s: float = 30.0) -> None:
        """Block until Kafka acknowledged every letter published so far; `BrokerError` if it refused any.

        Call it before committing past the rejected records: a letter still queued would be lost to a crash.
        """
        started, warned = time.monotonic(), False
        while self._producer.flush(1.0):
            self._raise_refused()
            if not warned and time.monotonic() - started > warn_after_s:
                log.warning("dead letters still not acknowledged by Kafka; waiting (is the broker up?)",
                            waited_s=round(time.monotonic() - started))
                warned = True
        self._raise_refused()

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._refused.append(f"{msg.topic()}: {err.str()}")

    def _raise_refused(self) -> None:
        if self._refused:
            refused, self._refused = self._refused, []
            raise BrokerError(f"Kafka refused {len(refused)} dead letter(s) (first: {refused[0]}); the records "
                              "they stand for are not committed, so a restart dead-letters them again")


def parse_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Dead-letter headers as a plain dict (for ops tools and tests)."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or []) if k.startswith("streamml.")}
