"""Service state in a changelog-backed faust table, checkpointed together with the input offsets.

A service's value holds its impact engine state (buckets, releases, verdicts), its admission, and
its part of the flow, DORA and ledger state (`Pipeline.snapshot_service`). Exactly-once effect on
all of it without Kafka transactions:

- Each service's snapshot carries the input offsets (topic, partition -> last offset) whose effects
  it contains. An event at or below its service's recorded offset is a replay after a crash or a
  rebalance and is skipped (`admit` returns False): it is never counted twice.
- The intake acks events only after the snapshots covering them were handed to the producer
  (`flush` then the caller acks); faust flushes the producer before it commits offsets, so the
  committed offset never passes what the changelog holds: nothing is lost.
- When partitions are assigned, every service of those partitions is restored from the table
  (not lazily), so a service that gets no more input still reports its state.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import faust
import orjson

from stream_app.pipeline import Pipeline
from stream_app.settings import Settings

TABLE_NAME = (
    "impact-state"  # permanent: it names the changelog topic <app_id>-impact-state-changelog
)
SNAPSHOT_MAX_BYTES = 16 * 1024 * 1024
# Envelope: magic, u32 meta length, meta (json), service snapshot. Its own magic: the impact
# engine's bare snapshots (the table's oldest values) begin with b"VLS1", as envelopes once did.
_ENVELOPE = b"VLE1"
_OLD_ENVELOPE = b"VLS1"
_META_START = b'{"partition":'

Offsets = dict[tuple[str, int], int]


def wrap(partition: int, offsets: Offsets, engine_snapshot: bytes) -> bytes:
    """A table value: the engine snapshot with its partition and the input offsets it covers."""
    meta = orjson.dumps(
        {"partition": partition, "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())]}
    )
    return _ENVELOPE + struct.pack("<I", len(meta)) + meta + engine_snapshot


def unwrap(value: bytes) -> tuple[int | None, Offsets, bytes]:
    """(partition, offsets, service snapshot) of a table value (older bare snapshots: no offsets).

    Reads both envelope magics; a value under the old one whose meta is not an envelope's is a
    bare engine snapshot (same magic), returned whole.
    """
    if not value.startswith((_ENVELOPE, _OLD_ENVELOPE)):
        return None, {}, value
    start = len(_ENVELOPE) + 4
    if len(value) < start:
        return None, {}, value
    (n,) = struct.unpack_from("<I", value, len(_ENVELOPE))
    raw = value[start : start + n]
    if value.startswith(_OLD_ENVELOPE) and not (
        start + n <= len(value) and raw.startswith(_META_START) and raw.endswith(b"}")
    ):
        return None, {}, value
    meta = orjson.loads(raw)
    offsets = {(str(t), int(p)): int(o) for t, p, o in meta.get("offsets", [])}
    return meta.get("partition"), offsets, value[start + n :]


class ServiceStateTable:
    """Keeps the engine's per-service state in a faust table (changelog topic in Kafka).

    The table is partitioned like the input topics, so a service's state lives on the partition
    its events arrive on and moves with it in a rebalance. Dirty services are written at most every
    `interval` seconds (a snapshot is the whole service state, so writing per event would cost more
    than the events).
    """

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        pipeline: Pipeline,
        interval: float = 2.0,
        on_restore: Callable[[str], None] | None = None,
        on_snapshot: Callable[[str], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.on_restore = on_restore
        self.on_snapshot = on_snapshot
        self.interval = interval
        # Typed Any: faust's TableT stub lacks the serializer attributes set below.
        table: Any = app.Table(
            TABLE_NAME,
            default=None,
            partitions=settings.topic_partitions,
            extra_topic_configs={"max.message.bytes": str(SNAPSHOT_MAX_BYTES)},
        )
        # Snapshots are bytes (zlib) and keys plain names: faust tables default to json for both
        # (and build their changelog topic with it), which fails on recovery. Rebuild it raw.
        table.key_serializer = "raw"
        table.value_serializer = "raw"
        table._changelog_topic = table._new_changelog_topic()
        self.table = table
        self.partition_of: dict[str, int] = {}
        self.loaded: set[str] = set()
        # service -> (input topic, partition) -> last offset applied to its state
        self.applied: dict[str, Offsets] = {}
        self._touched: set[str] = set()  # services with input since the last flush
        self._last_flush = 0.0

    # -- input ------------------------------------------------------------------------------

    def admit(self, service: str, topic: str, partition: int, offset: int) -> bool:
        """Whether to apply this input to `service`'s state (False: already in its snapshot).

        Restores the service's state on first sight and records the offset as applied.
        """
        if service not in self.loaded:
            self._load(service, partition)
        applied = self.applied.setdefault(service, {})
        key = (topic, partition)
        if offset <= applied.get(key, -1):
            return False
        applied[key] = offset
        self._touched.add(service)
        return True

    def replayed(self, service: str, topic: str, partition: int, offset: int) -> bool:
        """Whether a loaded service's state already holds this input (a re-delivery)."""
        if service not in self.loaded:
            return False
        return offset <= self.applied.get(service, {}).get((topic, partition), -1)

    def before(self, service: str, partition: int) -> None:
        """Restore `service`'s state on first sight (for input not checkpointed by offset)."""
        if service not in self.loaded:
            self._load(service, partition)

    def _load(self, service: str, partition: int) -> None:
        self.loaded.add(service)
        self.partition_of[service] = partition
        data = self.table.data.get(service.encode())
        if data:
            self._restore(service, bytes(data))

    def _restore(self, service: str, value: bytes) -> None:
        _, offsets, snap = unwrap(value)
        self.pipeline.restore_service(service, snap)  # engine and guard state
        self.applied[service] = dict(offsets)
        if self.on_restore is not None:
            self.on_restore(service)

    def restore_partitions(self, partitions: Iterable[int]) -> int:
        """Restore every service whose snapshot lives on one of `partitions`; returns how many."""
        wanted = set(partitions)
        n = 0
        for key, value in list(self.table.data.items()):
            if not value:
                continue
            service = bytes(key).decode()
            partition, _, _ = unwrap(bytes(value))
            if partition is None or partition not in wanted or service in self.loaded:
                continue
            self.loaded.add(service)
            self.partition_of[service] = partition
            self._restore(service, bytes(value))
            n += 1
        return n

    # -- checkpoint -------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether the flush interval has passed."""
        return time.monotonic() - self._last_flush >= self.interval

    def flush(self) -> int:
        """Hand the snapshots of every service changed since the last flush to the producer.

        After this returns, the caller may ack the input it applied: faust flushes the producer
        before it commits offsets. Returns the number of snapshots written.
        """
        self._last_flush = time.monotonic()
        engine = self.pipeline.engine
        # A service's snapshot holds its engine state and its part of the flow, DORA and ledger
        # state: all written here, with the input offsets whose effects they hold.
        changed = engine.dirty_services() | self._touched | self.pipeline.dirty_services()
        n = 0
        for service in sorted(changed):
            partition = self.partition_of.get(service)
            if partition is None:
                continue
            key = service.encode()
            snap = self.pipeline.snapshot_service(service)
            value = wrap(partition, self.applied.get(service, {}), snap)
            self.table.data[key] = value
            self.table.send_changelog(
                partition, key, value, key_serializer="raw", value_serializer="raw"
            )
            n += 1
            if self.on_snapshot is not None:
                self.on_snapshot(service)
        engine.clear_dirty()
        self.pipeline.clear_dirty()
        self._touched.clear()
        return n

    def maybe_flush(self, force: bool = False) -> int:
        """`flush` when the interval has passed (or `force`); returns how many snapshots."""
        return self.flush() if force or self.due() else 0

    def forget(self, partitions: Any) -> None:
        """Drop in-memory state of services whose partitions were revoked (the table keeps it)."""
        gone = {tp.partition for tp in partitions}
        for service, p in list(self.partition_of.items()):
            if p in gone:
                self.loaded.discard(service)
                self.applied.pop(service, None)
                self._touched.discard(service)
                del self.partition_of[service]
                self.pipeline.forget_service(service)
