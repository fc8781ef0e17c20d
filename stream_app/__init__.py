"""valueloop: streaming release impact and value-stream metrics from Kafka events."""

__version__ = "0.1.0"
