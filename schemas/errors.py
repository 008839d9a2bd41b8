"""The one exception hierarchy of streamml.

Every error a user can see derives from `StreammlError`; messages say what went wrong and what to do.
"""

from __future__ import annotations


class StreammlError(Exception):
    """Root of every streamml error."""


class ConfigError(StreammlError):
    """A setting is missing or invalid."""


class SchemaError(StreammlError):
    """A schema is malformed, unknown or not compatible with its predecessors."""


class IncompatibleSchemaError(SchemaError):
    """A new schema version would break readers of the existing versions."""

    def __init__(self, subject: str, messages: list[str]):
        self.subject = subject
        self.messages = messages
        super().__init__(
            f"schema for subject {subject!r} is not compatible: {'; '.join(messages)}. "
            "Give new fields a default, keep removed enum symbols or add an enum default, "
            "or register under a new subject."
        )


class RegistryError(StreammlError):
    """The schema registry could not be reached or refused a request."""


class BrokerError(StreammlError):
    """The Kafka broker is unreachable or refused a request."""


class DecodeError(StreammlError):
    """A record could not be decoded; carries where it came from and a short machine reason."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ):
        self.reason = reason
        self.detail = detail
        self.topic = topic
        self.partition = partition
        self.offset = offset
        where = f" at {topic}[{partition}]@{offset}" if topic is not None else ""
        super().__init__(f"cannot decode record{where}: {reason}: {detail}")

    def located(self, topic: str, partition: int | None, offset: int | None) -> DecodeError:
        """The same error with its source position filled in."""
        return DecodeError(self.reason, self.detail, topic=topic, partition=partition, offset=offset)


class ValidationError(DecodeError):
    """A record decoded but breaks a semantic rule (negative price, timestamp far in the future…)."""


class ReplayError(StreammlError):
    """A replay or training export cannot run as asked (missing or corrupt input, empty range, bad namespace)."""


class ModelError(StreammlError):
    """A model cannot be built, stored, loaded or activated (unknown kind or version, corrupt snapshot)."""


class ModelNotFoundError(ModelError):
    """A model version that the store does not hold."""


class CdcError(StreammlError):
    """The CDC reader cannot capture as configured (source database settings, tables, slot, protocol)."""


class RecoveryError(StreammlError):
    """The feature flow's recovery state cannot be read back (a state segment missing or unreadable)."""

    @classmethod
    def start_over(cls, what: str, store: str = "$STREAMML_HOME/recovery/features") -> RecoveryError:
        """`what` went wrong, and how to start over (the one wording of it)."""
        return cls(f"{what}. To start over, delete {store} (the flow then rebuilds its state from the topics' "
                   "retained events).")
