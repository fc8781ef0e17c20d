"""Exception hierarchy of valueloop, rooted at one base class."""


class ValueloopError(Exception):
    """Base class of every error valueloop raises on purpose."""


class ConfigError(ValueloopError):
    """Settings or a configuration file are invalid."""


class DecodeError(ValueloopError):
    """A message could not be turned into an event.

    Attributes:
        reason: a short, bounded machine-readable reason (used as a metric label).
        detail: a human explanation (free text, never a label).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BrokerError(ValueloopError):
    """The local broker could not be prepared, started or stopped."""


class DeliveryError(ValueloopError):
    """A message could not be delivered to Kafka."""


class KafkaAccessError(ValueloopError):
    """The Kafka cluster cannot be reached, or refuses the configured credentials or TLS."""
