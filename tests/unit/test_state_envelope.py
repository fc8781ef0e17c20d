"""The changelog table's value envelope: wrap/unwrap round trips and the older formats it reads."""

from __future__ import annotations

import struct

import orjson

from stream_app.agents.state import unwrap, wrap
from stream_app.core.catalog import load_catalog
from stream_app.core.impact import ImpactEngine
from stream_app.events.model import KpiSample

T0 = 1_700_000_000.0


def _engine_snapshot() -> bytes:
    engine = ImpactEngine(load_catalog())
    for i in range(50):
        engine.on_sample(KpiSample("checkout", "sessions", T0 + 60.0 * i, 100.0 + i))
    return engine.snapshot("checkout")


def test_wrap_unwrap_round_trip() -> None:
    snap = _engine_snapshot()
    offsets = {("vsm.telemetry", 2): 41, ("vsm.deployments", 2): 7}
    assert unwrap(wrap(2, offsets, snap)) == (2, offsets, snap)


def test_a_bare_engine_snapshot_is_read_as_one_not_as_an_envelope() -> None:
    # The engine's snapshots and the first envelopes shared the magic b"VLS1": a table holding
    # a bare snapshot (older than the envelope) made unwrap parse zlib bytes as JSON.
    snap = _engine_snapshot()
    assert snap.startswith(b"VLS1")
    assert unwrap(snap) == (None, {}, snap)
    ImpactEngine(load_catalog()).restore("checkout", unwrap(snap)[2])


def test_an_envelope_under_the_old_magic_is_still_read() -> None:
    snap = _engine_snapshot()
    meta = orjson.dumps({"partition": 1, "offsets": [["vsm.telemetry", 1, 9]]})
    old = b"VLS1" + struct.pack("<I", len(meta)) + meta + snap
    assert unwrap(old) == (1, {("vsm.telemetry", 1): 9}, snap)


def test_new_envelopes_do_not_begin_like_engine_snapshots() -> None:
    assert not wrap(0, {}, b"x").startswith(b"VLS1")
