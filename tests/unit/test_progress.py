"""Stall detection: lag from the committed offset, no progress while lagging for too long."""

from __future__ import annotations

from stream_app.core.progress import PartitionOffsets, StallWatch, stalled

TP = ("vsm.telemetry", 0)


def test_lag_counts_from_the_committed_offset_else_the_log_start() -> None:
    assert PartitionOffsets(done=40, start=0, end=100).lag == 60
    assert PartitionOffsets(done=None, start=10, end=100).lag == 90
    assert PartitionOffsets(done=100, start=0, end=100).lag == 0
    assert PartitionOffsets(done=5, start=0, end=None).lag == 0  # end unknown yet


def test_a_partition_whose_committed_offset_stays_put_while_lagging_stalls() -> None:
    watch = StallWatch(stall_after=30.0)
    stuck = PartitionOffsets(done=10, start=0, end=500)
    first = watch.observe(100.0, {TP: stuck})[0]
    assert first.lag == 490 and first.since_progress == 0.0 and not first.stalled
    assert not watch.observe(129.0, {TP: stuck})[0].stalled
    late = watch.observe(130.0, {TP: stuck})[0]
    assert late.stalled and late.since_progress == 30.0
    assert stalled([late]) == [late]


def test_progress_or_no_lag_resets_the_clock() -> None:
    watch = StallWatch(stall_after=30.0)
    watch.observe(0.0, {TP: PartitionOffsets(10, 0, 500)})
    moving = watch.observe(40.0, {TP: PartitionOffsets(20, 0, 500)})[0]
    assert not moving.stalled and moving.since_progress == 0.0
    # Caught up: an idle partition never stalls, however long nothing moves.
    watch.observe(50.0, {TP: PartitionOffsets(500, 0, 500)})
    idle = watch.observe(500.0, {TP: PartitionOffsets(500, 0, 500)})[0]
    assert not idle.stalled and idle.lag == 0
    # New input after the idle time: the clock starts when the lag appears, not before.
    assert not watch.observe(510.0, {TP: PartitionOffsets(500, 0, 600)})[0].stalled


def test_a_reassigned_partition_starts_a_new_clock() -> None:
    watch = StallWatch(stall_after=30.0)
    watch.observe(0.0, {TP: PartitionOffsets(10, 0, 500)})
    assert watch.observe(31.0, {TP: PartitionOffsets(10, 0, 500)})[0].stalled
    watch.observe(32.0, {})  # revoked
    back = watch.observe(40.0, {TP: PartitionOffsets(10, 0, 500)})[0]
    assert not back.stalled and back.since_progress == 0.0
