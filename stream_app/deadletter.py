"""Dead letters that always fit: a message too large to re-produce is sent as a truncated copy.

The broker may accept a message the dead-letter producer cannot send back: it arrived compressed,
or on a topic whose `max.message.bytes` was raised. Re-producing it whole fails with
MSG_SIZE_TOO_LARGE, and a dead letter that cannot be sent stops its partition for good (the input
stays unacked). So when the original does not fit, the dead letter carries the first
`TRUNCATED_VALUE_BYTES` of the value, and headers with the original's size and SHA-256 digest;
the source topic, partition and offset headers say where the whole message is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

Header = tuple[str, bytes]

TRUNCATED_VALUE_BYTES = 64 * 1024  # what a truncated dead letter keeps of the value
TRUNCATED_KEY_BYTES = 1024  # ... of the key
HEADERS_KEPT_BYTES = 64 * 1024  # original headers larger than this in total are dropped
# Per-message framing librdkafka counts against message.max.bytes (record and batch headers).
RECORD_OVERHEAD = 512

H_TRUNCATED = "valueloop.truncated"
H_SIZE = "valueloop.original.size"
H_SHA256 = "valueloop.original.sha256"
H_KEY_SIZE = "valueloop.original.key.size"
H_KEY_SHA256 = "valueloop.original.key.sha256"
H_HEADERS_SIZE = "valueloop.original.headers.size"


def message_bytes(key: bytes | None, value: bytes, headers: list[Header]) -> int:
    """What a message weighs against a producer's `message.max.bytes` (key, value, headers and
    framing)."""
    head = sum(len(k.encode()) + len(v) for k, v in headers)
    return len(key or b"") + len(value) + head + RECORD_OVERHEAD


def limit_for(producer_max: int, topic_max: int | None) -> int:
    """The largest dead letter (as `message_bytes` counts it) that both the producer and the
    dead-letter topic accept.

    Args:
        producer_max: the producer's `message.max.bytes`.
        topic_max: the topic's `max.message.bytes` (None: unknown, the broker default 1048588).
    """
    topic = 1_048_588 if topic_max is None else topic_max
    # The broker checks the compressed batch: leave room for a codec that expands random bytes.
    return min(producer_max, int(topic * 0.98) - 1024)


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter to send."""

    key: bytes | None
    value: bytes
    headers: list[Header]
    truncated: bool


def fit(
    key: bytes | None,
    value: bytes,
    original: list[Header],
    ours: list[Header],
    limit: int,
) -> Letter:
    """The dead letter to send for a message: unchanged when it fits in `limit` bytes, else a
    truncated copy that says so.

    Args:
        key, value: the original key and value.
        original: the original message's headers (kept unless they alone are too large).
        ours: valueloop's headers (source, reason, detail), always kept.
        limit: the largest message allowed (see `limit_for`).

    Returns:
        The dead letter. A truncated copy keeps the first TRUNCATED_VALUE_BYTES of the value
        and adds `valueloop.truncated: true`, `valueloop.original.size` (bytes of the value) and
        `valueloop.original.sha256` (hex digest of the whole value); a key longer than
        TRUNCATED_KEY_BYTES is cut too (`valueloop.original.key.size`, `.key.sha256`), and original
        headers over HEADERS_KEPT_BYTES in total are dropped (`valueloop.original.headers.size`).
    """
    if message_bytes(key, value, [*original, *ours]) <= limit:
        return Letter(key, value, [*original, *ours], truncated=False)
    added: list[Header] = [
        (H_TRUNCATED, b"true"),
        (H_SIZE, str(len(value)).encode()),
        (H_SHA256, hashlib.sha256(value).hexdigest().encode()),
    ]
    if key is not None and len(key) > TRUNCATED_KEY_BYTES:
        added += [
            (H_KEY_SIZE, str(len(key)).encode()),
            (H_KEY_SHA256, hashlib.sha256(key).hexdigest().encode()),
        ]
        key = key[:TRUNCATED_KEY_BYTES]
    head = sum(len(k.encode()) + len(v) for k, v in original)
    if head > HEADERS_KEPT_BYTES:
        added.append((H_HEADERS_SIZE, str(head).encode()))
        original = []
    headers = [*original, *ours, *added]
    room = limit - message_bytes(key, b"", headers)
    kept = value[: max(0, min(TRUNCATED_VALUE_BYTES, room))]
    return Letter(key, kept, headers, truncated=True)
