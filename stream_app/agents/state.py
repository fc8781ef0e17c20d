"""Engine state in a changelog-backed faust table: one key per service, restored on first sight."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import faust

from stream_app.pipeline import Pipeline
from stream_app.settings import Settings

TABLE_NAME = (
    "impact-state"  # permanent: it names the changelog topic <app_id>-impact-state-changelog
)
SNAPSHOT_MAX_BYTES = 16 * 1024 * 1024


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
        self._last_flush = 0.0

    def before(self, service: str, partition: int) -> None:
        """Call before handling an event of `service`: restores its state on first sight."""
        if service in self.loaded:
            return
        self.loaded.add(service)
        self.partition_of[service] = partition
        data = self.table.data.get(service.encode())
        if data:
            self.pipeline.engine.restore(service, bytes(data))
            if self.on_restore is not None:
                self.on_restore(service)

    def maybe_flush(self, force: bool = False) -> int:
        """Write the snapshots of dirty services when the interval has passed; returns how many."""
        now = time.monotonic()
        if not force and now - self._last_flush < self.interval:
            return 0
        self._last_flush = now
        engine = self.pipeline.engine
        dirty = engine.dirty_services()
        n = 0
        for service in sorted(dirty):
            partition = self.partition_of.get(service)
            if partition is None:
                continue
            key = service.encode()
            snap = engine.snapshot(service)
            self.table.data[key] = snap
            self.table.send_changelog(
                partition, key, snap, key_serializer="raw", value_serializer="raw"
            )
            n += 1
            if self.on_snapshot is not None:
                self.on_snapshot(service)
        engine.clear_dirty()
        return n

    def forget(self, partitions: Any) -> None:
        """Drop in-memory state of services whose partitions were revoked (the table keeps it)."""
        gone = {tp.partition for tp in partitions}
        for service, p in list(self.partition_of.items()):
            if p in gone:
                self.loaded.discard(service)
                del self.partition_of[service]
