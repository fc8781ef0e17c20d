"""Dead letters always fit: an original too large to re-produce becomes a truncated copy."""

from __future__ import annotations

import hashlib

from stream_app.deadletter import (
    H_HEADERS_SIZE,
    H_KEY_SHA256,
    H_KEY_SIZE,
    H_SHA256,
    H_SIZE,
    H_TRUNCATED,
    TRUNCATED_KEY_BYTES,
    TRUNCATED_VALUE_BYTES,
    fit,
    limit_for,
    message_bytes,
)

OURS = [("valueloop.source.topic", b"vsm.telemetry"), ("valueloop.reason", b"oversized")]
LIMIT = limit_for(1_000_000, 1_048_588)


def test_a_message_that_fits_is_sent_whole_with_its_headers() -> None:
    value = b"x" * 600_000  # the 600 kB message: dead-lettered whole
    letter = fit(b"checkout", value, [("ce_id", b"1")], OURS, LIMIT)
    assert not letter.truncated
    assert letter.key == b"checkout" and letter.value == value
    assert letter.headers == [("ce_id", b"1"), *OURS]


def test_a_message_too_large_becomes_a_truncated_copy_with_size_and_digest() -> None:
    value = bytes(range(256)) * 8000  # 2,048,000 bytes
    letter = fit(b"checkout", value, [("ce_id", b"1")], OURS, LIMIT)
    assert letter.truncated
    assert letter.key == b"checkout"
    assert letter.value == value[:TRUNCATED_VALUE_BYTES]
    h = dict(letter.headers)
    assert h[H_TRUNCATED] == b"true"
    assert h[H_SIZE] == b"2048000"
    assert h[H_SHA256] == hashlib.sha256(value).hexdigest().encode()
    assert h["valueloop.reason"] == b"oversized" and h["ce_id"] == b"1"
    assert message_bytes(letter.key, letter.value, letter.headers) <= LIMIT


def test_just_over_the_limit_is_truncated_and_the_result_fits() -> None:
    base = message_bytes(b"k", b"", OURS)
    value = b"v" * (LIMIT - base + 1)
    assert not fit(b"k", value[:-1], [], OURS, LIMIT).truncated
    letter = fit(b"k", value, [], OURS, LIMIT)
    assert letter.truncated
    assert message_bytes(letter.key, letter.value, letter.headers) <= LIMIT


def test_huge_keys_and_headers_are_cut_too() -> None:
    key = b"k" * 2_000_000
    original = [(f"h{i}", b"y" * 1000) for i in range(100)]  # 100 kB of headers
    letter = fit(key, b"{}", original, OURS, LIMIT)
    assert letter.truncated
    assert letter.key == key[:TRUNCATED_KEY_BYTES]
    h = dict(letter.headers)
    assert h[H_KEY_SIZE] == b"2000000"
    assert h[H_KEY_SHA256] == hashlib.sha256(key).hexdigest().encode()
    assert int(h[H_HEADERS_SIZE]) > 100_000 and "h0" not in h
    assert letter.value == b"{}"
    assert message_bytes(letter.key, letter.value, letter.headers) <= LIMIT


def test_a_small_dead_letter_topic_lowers_the_limit() -> None:
    assert limit_for(1_000_000, None) == 1_000_000
    small = limit_for(1_000_000, 200_000)
    assert small < 200_000
    letter = fit(None, b"z" * 300_000, [], OURS, small)
    assert letter.truncated and letter.key is None
    assert message_bytes(None, letter.value, letter.headers) <= small
