"""Event-time buckets of KPI sample streams per service: sums, counts and quantile sketches."""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import Literal, NamedTuple

import orjson

from stream_app.core.catalog import Catalog

SampleOutcome = Literal[
    "accepted",
    "late",
    "unknown-stream",
    "out-of-scope",
    "invalid-value",
    "too-many-label-values",
]
SAMPLE_OUTCOMES: tuple[SampleOutcome, ...] = (
    "accepted",
    "late",
    "unknown-stream",
    "out-of-scope",
    "invalid-value",
    "too-many-label-values",
)

# Buckets live in dense chunks of CHUNK buckets: one array of (sum, count) pairs per chunk costs
# ~16 bytes per bucket plus ~1.5 bytes of shared overhead, and a gap in the data costs nothing.
CHUNK = 64
_ZERO_CHUNK = array("d", [0.0]) * (2 * CHUNK)
_LITTLE = sys.byteorder == "little"

_isfinite = math.isfinite
_floor = math.floor
_SCOPE_NAME_CACHE = 4096  # (label, value) -> scope name entries kept for the hot path

# Sketch: DDSketch-style log buckets. Every value in key k's bin is within RELATIVE_ACCURACY of the
# bin's representative value, so any quantile read from the sketch is within ~1 % of the true one.
RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LN_GAMMA = math.log(GAMMA)
_MIN_MAGNITUDE = 1e-9  # below this a value is counted as zero
_KEY_OFFSET = 2000  # keeps positive keys > 0 and negative keys < 0, so key order is value order


def scope_key(label: str, value: str) -> str:
    """The bucket scope of samples whose label `label` is `value` ("" is the all-traffic scope)."""
    return f"{label}={value}"


def sketch_key(x: float) -> int:
    """The sketch bin of value `x`; bins sort in the same order as the values they hold."""
    m = abs(x)
    if m < _MIN_MAGNITUDE:
        return 0
    k = math.ceil(math.log(m) / _LN_GAMMA) + _KEY_OFFSET
    return k if x > 0 else -k


def key_value(key: int) -> float:
    """The representative value of bin `key` (within RELATIVE_ACCURACY of anything in the bin)."""
    if key == 0:
        return 0.0
    k = abs(key) - _KEY_OFFSET
    v = 2.0 * math.exp(k * _LN_GAMMA) / (GAMMA + 1.0)
    return v if key > 0 else -v


def sketch_quantile(keys: list[int], weights: list[float], q: float) -> float | None:
    """The `q` quantile of a sketch given as ascending keys and their weights (None when empty)."""
    total = math.fsum(weights)
    if total <= 0:
        return None
    rank = q * max(total - 1.0, 0.0)
    cum = 0.0
    for k, w in zip(keys, weights, strict=True):
        cum += w
        if cum > rank:
            return key_value(k)
    return key_value(keys[-1])


def _put_varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _get_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def encode_sketch(bins: Mapping[int, float]) -> bytes:
    """A closed bucket's sketch as compact bytes (lossless).

    Layout: flag byte (0: integral weights as varints, 1: float64 weights), varint bin count,
    first key zig-zag varint, then key deltas as varints, then the weights.
    """
    keys = sorted(bins)
    weights = [bins[k] for k in keys]
    try:
        ints = list(map(int, weights))
        integral = ints == weights and (not ints or (min(weights) >= 0 and max(weights) < 2**53))
    except (OverflowError, ValueError):  # inf or NaN: not integral
        integral = False
    out = bytearray((0 if integral else 1,))
    _put_varint(out, len(keys))
    if not keys:
        return bytes(out)
    k0 = keys[0]
    _put_varint(out, (k0 << 1) if k0 >= 0 else ((-k0 << 1) - 1))
    deltas = [b - a for a, b in pairwise(keys)]
    if integral:
        rest = deltas + ints
        if max(rest) < 0x80:
            # Every varint is one byte (near bins, small counts): the common closed minute.
            out += bytes(rest)
        else:
            for v in rest:
                _put_varint(out, v)
    else:
        for d in deltas:
            _put_varint(out, d)
        out += struct.pack(f"<{len(weights)}d", *weights)
    return bytes(out)


def decode_sketch(data: bytes) -> tuple[list[int], list[float]]:
    """Ascending keys and weights of a sketch made by `encode_sketch`."""
    integral = data[0] == 0
    n, pos = _get_varint(data, 1)
    if n == 0:
        return [], []
    v, pos = _get_varint(data, pos)
    first = (v >> 1) if not v & 1 else -((v + 1) >> 1)
    if integral and len(data) - pos == 2 * n - 1:
        # 2n - 1 varints in 2n - 1 bytes: each is a single byte (the common case).
        rest = data[pos:]
        return list(accumulate(rest[: n - 1], initial=first)), [float(w) for w in rest[n - 1 :]]
    keys = [first]
    prev = first
    for _ in range(n - 1):
        v, pos = _get_varint(data, pos)
        prev += v
        keys.append(prev)
    if integral:
        weights: list[float] = []
        for _ in range(n):
            v, pos = _get_varint(data, pos)
            weights.append(float(v))
    else:
        weights = list(struct.unpack_from(f"<{n}d", data, pos))
    return keys, weights


class StreamLayout(NamedTuple):
    """How one sample stream is bucketed: its bucket width and whether it keeps a sketch."""

    bucket_seconds: float
    sketch: bool


def layouts_for(catalog: Catalog, service: str) -> dict[str, StreamLayout]:
    """The streams a service's KPIs read, with their bucket width and sketch need."""
    out: dict[str, StreamLayout] = {}
    for spec in catalog.for_service(service):
        for stream in spec.streams():
            prev = out.get(stream)
            sketch = spec.aggregation == "quantile" or (prev is not None and prev.sketch)
            out[stream] = StreamLayout(spec.bucket_seconds, sketch)
    return out


@dataclass(frozen=True, slots=True)
class BucketRead:
    """Buckets [first, stop) of one (stream, scope): sums, counts and, when asked, quantiles.

    A bucket without samples has sum 0 and count 0 (and quantile None).
    """

    first: int
    sums: list[float]
    counts: list[float]
    quantiles: list[float | None] | None = None


class _Series:
    """Buckets of one (stream, scope); plain containers only, so the per-bucket cost stays small."""

    __slots__ = ("chunks", "closed", "open")

    def __init__(self, sketch: bool) -> None:
        self.chunks: dict[int, array[float]] = {}
        # Sketches of buckets the watermark has not passed yet (mutable), then compacted to bytes.
        self.open: dict[int, dict[int, float]] | None = {} if sketch else None
        self.closed: dict[int, bytes] | None = {} if sketch else None

    def bins(self, idx: int) -> dict[int, float] | None:
        """The sketch bins of bucket `idx` (None when it has none)."""
        assert self.open is not None and self.closed is not None
        hot = self.open.get(idx)
        if hot is not None:
            return hot
        blob = self.closed.get(idx)
        if blob is None:
            return None
        keys, weights = decode_sketch(blob)
        return dict(zip(keys, weights, strict=True))

    def empty(self) -> bool:
        return not self.chunks and not self.open and not self.closed


class _Hot:
    """Per-stream lookups of the sample hot path, rebuilt whenever a series comes or goes."""

    __slots__ = ("first", "main", "scoped", "sketch", "width")

    def __init__(self, width: float, sketch: bool, first: float) -> None:
        self.width = width
        self.sketch = sketch
        self.first = first  # mirrors first_seen[stream] (inf when none)
        self.main: _Series | None = None  # the all-traffic ("") series
        self.scoped: dict[str, dict[str, _Series]] = {}  # label -> value -> series


class ServiceBuckets:
    """Event-time buckets of one service's sample streams, with its watermark.

    The watermark is the newest event time seen minus the allowed lateness. A sample whose bucket
    ended at or before the watermark is ``late``: it is counted by the caller and not used, so a
    bucket never changes once closed. Besides the all-traffic scope "", each sample also goes to one
    scope per configured label it carries (e.g. "region=eu"), at most `max_label_values` values per
    (stream, label) retained at a time; a sample bringing one more is rejected.
    """

    def __init__(
        self,
        layouts: Mapping[str, StreamLayout],
        *,
        lateness: float,
        retention: float,
        scope_labels: Iterable[str] = (),
        max_label_values: int = 32,
    ) -> None:
        self.layouts = dict(layouts)
        self.lateness = lateness
        self.retention = retention
        self.scope_labels = tuple(scope_labels)
        self.max_label_values = max_label_values
        self.max_time: float | None = None
        self.flushed_to: float | None = None
        # Per stream, the oldest event time ever accepted: before it there is no history, which a
        # sum must not read as zeros (a reference or baseline starting earlier is incomplete).
        self.first_seen: dict[str, float] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._label_values: dict[tuple[str, str], set[str]] = {}
        self._scope_names: dict[tuple[str, str], str] = {}  # (label, value) -> scope_key(...)
        self._hot: dict[str, _Hot] = {}  # stream -> hot-path lookups (a cache of the above)

    @property
    def watermark(self) -> float:
        """Event time up to which every bucket is closed (-inf before the first event)."""
        if self.max_time is None:
            return -math.inf
        wm = self.max_time - self.lateness
        return wm if self.flushed_to is None else max(wm, self.flushed_to)

    @property
    def horizon(self) -> float:
        """Buckets ending at or before this time are forgotten (reads see them empty)."""
        return self.watermark - self.retention

    def observe(self, time: float) -> None:
        """Let an event time that is not a sample (a release) move the watermark."""
        if math.isfinite(time) and (self.max_time is None or time > self.max_time):
            self.max_time = time

    def flush(self) -> None:
        """End of input: no more data is coming, so close everything up to the newest event time."""
        if self.max_time is not None:
            self.flushed_to = self.max_time

    def add(
        self,
        stream: str,
        time: float,
        value: float,
        count: float = 1.0,
        labels: Mapping[str, str] | None = None,
    ) -> SampleOutcome:
        """Add one sample to its event-time bucket.

        For a sketched stream a sample with ``count`` > 1 is taken as ``count`` observations of
        ``value / count`` (its mean): a pre-aggregated sample carries no finer distribution.

        Returns:
            "accepted", or why not: "late", "unknown-stream", "invalid-value",
            "too-many-label-values".
        """
        # The hot path of the worker (one call per sample): a sample of a stream and scopes that
        # already hold buckets is placed here with cached lookups; anything else (a new stream,
        # scope or label value, a bad value) takes `_add` below, which decides every outcome.
        hot = self._hot.get(stream)
        if hot is None or hot.main is None:
            return self._add(stream, time, value, count, labels)
        if not (_isfinite(time) and _isfinite(value) and _isfinite(count)) or count < 0:
            return self._add(stream, time, value, count, labels)
        if count == 0 and value != 0:
            return "invalid-value"  # a value with no observation behind it
        width = hot.width
        idx = _floor(time / width)
        newest = self.max_time
        if newest is not None:  # inlined `watermark`
            wm = newest - self.lateness
            flushed = self.flushed_to
            if flushed is not None and flushed > wm:
                wm = flushed
            if (idx + 1) * width <= wm:
                return "late"
        targets = [hot.main]
        if labels and self.scope_labels:
            scoped = hot.scoped
            for label in self.scope_labels:
                v = labels.get(label)
                if v is None:
                    continue
                by_value = scoped.get(label)
                ser = by_value.get(v) if by_value is not None else None
                if ser is None:  # a new label value: limits and series creation
                    return self._add(stream, time, value, count, labels)
                targets.append(ser)
        ci = idx // CHUNK
        j = 2 * (idx - ci * CHUNK)
        key = sketch_key(value / count) if hot.sketch and count > 0 else None
        for series in targets:
            chunk = series.chunks.get(ci)
            if chunk is None:
                chunk = series.chunks[ci] = array("d", _ZERO_CHUNK)
            chunk[j] += value
            chunk[j + 1] += count
            if key is not None and series.open is not None:
                bins = series.open.get(idx)
                if bins is None:
                    series.open[idx] = {key: 0.0 + count}
                else:
                    bins[key] = bins.get(key, 0.0) + count
        if newest is None or time > newest:
            self.max_time = time
        if time < hot.first:
            hot.first = self.first_seen[stream] = time
        return "accepted"

    def _add(
        self,
        stream: str,
        time: float,
        value: float,
        count: float,
        labels: Mapping[str, str] | None,
    ) -> SampleOutcome:
        """`add` in full: every check, new series and label values; refreshes the hot lookups."""
        layout = self.layouts.get(stream)
        if layout is None:
            return "unknown-stream"
        if not (_isfinite(time) and _isfinite(value) and _isfinite(count)) or count < 0:
            return "invalid-value"
        if count == 0 and value != 0:
            return "invalid-value"  # a value with no observation behind it
        width = layout.bucket_seconds
        idx = math.floor(time / width)
        if (idx + 1) * width <= self.watermark:  # the fast path in `add` inlines this
            return "late"
        newest = self.max_time
        scopes = [""]
        if labels and self.scope_labels:
            names = self._scope_names
            for label in self.scope_labels:
                v = labels.get(label)
                if v is None:
                    continue
                known = self._label_values.get((stream, label))
                if known is not None and v not in known and len(known) >= self.max_label_values:
                    return "too-many-label-values"
                name = names.get((label, v))
                if name is None:
                    if len(names) >= _SCOPE_NAME_CACHE:
                        names.clear()  # label values churn: keep the cache bounded
                    name = names[(label, v)] = scope_key(label, v)
                scopes.append(name)
        ci, off = divmod(idx, CHUNK)
        key = sketch_key(value / count) if layout.sketch and count > 0 else None
        for scope in scopes:
            series = self._series.get((stream, scope))
            if series is None:
                series = self._new_series(stream, scope, layout.sketch)
            chunk = series.chunks.get(ci)
            if chunk is None:
                chunk = series.chunks[ci] = array("d", _ZERO_CHUNK)
            chunk[2 * off] += value
            chunk[2 * off + 1] += count
            if key is not None and series.open is not None:
                bins = series.open.get(idx)
                if bins is None:
                    bins = series.open[idx] = {}
                bins[key] = bins.get(key, 0.0) + count
        if newest is None or time > newest:
            self.max_time = time
        first = self.first_seen.get(stream)
        if first is None or time < first:
            self.first_seen[stream] = time
        hot = self._hot.get(stream)
        if hot is None:
            self._hot_for(stream)
        else:
            hot.first = self.first_seen[stream]
        return "accepted"

    def _hot_for(self, stream: str) -> None:
        """(Re)build the hot-path lookups of `stream` from the series it holds."""
        layout = self.layouts[stream]
        hot = _Hot(layout.bucket_seconds, layout.sketch, self.first_seen.get(stream, math.inf))
        for (st, scope), series in self._series.items():
            if st != stream:
                continue
            if not scope:
                hot.main = series
            else:
                label, _, value = scope.partition("=")
                hot.scoped.setdefault(label, {})[value] = series
        self._hot[stream] = hot

    def _new_series(self, stream: str, scope: str, sketch: bool) -> _Series:
        series = self._series[(stream, scope)] = _Series(sketch)
        if scope:
            label, _, value = scope.partition("=")
            self._label_values.setdefault((stream, label), set()).add(value)
        self._hot.pop(stream, None)
        return series

    def scopes(self, stream: str) -> list[str]:
        """The scopes of `stream` currently holding buckets ("" first)."""
        return sorted(s for (st, s) in self._series if st == stream)

    def read(
        self,
        stream: str,
        scope: str,
        first: int,
        stop: int,
        *,
        q: float | None = None,
        minus_scope: str | None = None,
        horizon: float | None = None,
    ) -> BucketRead:
        """Buckets with index in [first, stop) of (stream, scope).

        Args:
            stream: the sample stream.
            scope: "" for all traffic, or a scope like "region=eu".
            first: index of the first bucket (event time // bucket width).
            stop: index one past the last bucket.
            q: also compute this quantile of every bucket's sketch.
            minus_scope: subtract this scope's buckets (all traffic minus "region=eu" is the rest).
            horizon: buckets ending at or before this time read as empty (default: `horizon`); a
                caller passes the horizon of the moment its answer was due so the answer does not
                depend on how often eviction ran.
        """
        n = max(stop - first, 0)
        sums = [0.0] * n
        counts = [0.0] * n
        quantiles: list[float | None] | None = [None] * n if q is not None else None
        series = self._series.get((stream, scope))
        layout = self.layouts.get(stream)
        if series is None or layout is None or n == 0:
            return BucketRead(first, sums, counts, quantiles)
        # Buckets past the horizon read as empty whether or not they were evicted yet, so results do
        # not depend on how often the caller ran `evict`.
        cut = self.horizon if horizon is None else horizon
        # The first bucket ending after the cut.
        lo = first if cut == -math.inf else max(first, math.floor(cut / layout.bucket_seconds))
        if lo >= stop:
            return BucketRead(first, sums, counts, quantiles)
        other = self._series.get((stream, minus_scope)) if minus_scope else None
        for sign, ser in ((1.0, series), (-1.0, other)):
            if ser is None:
                continue
            for idx in range(lo, stop):
                ci, off = divmod(idx, CHUNK)
                chunk = ser.chunks.get(ci)
                if chunk is not None:
                    sums[idx - first] += sign * chunk[2 * off]
                    counts[idx - first] += sign * chunk[2 * off + 1]
        if other is not None:
            # Subtracting float sums leaves rounding dust where the rest of the traffic is empty.
            for i in range(n):
                if counts[i] <= 1e-9:
                    sums[i] = counts[i] = 0.0
        if quantiles is not None and q is not None and series.open is not None:
            for idx in range(lo, stop):
                if counts[idx - first] <= 0:
                    continue
                bins = series.bins(idx)
                if bins is None:
                    continue
                if other is not None and other.open is not None:
                    bins = dict(bins)
                    for k, w in (other.bins(idx) or {}).items():
                        bins[k] = bins.get(k, 0.0) - w
                keys = sorted(k for k, w in bins.items() if w > 1e-9)
                quantiles[idx - first] = sketch_quantile(keys, [bins[k] for k in keys], q)
        return BucketRead(first, sums, counts, quantiles)

    def compact(self) -> int:
        """Freeze the sketches of buckets the watermark has passed into compact bytes.

        Returns:
            How many sketches were compacted.
        """
        wm = self.watermark
        done = 0
        for (stream, _), series in self._series.items():
            if not series.open or series.closed is None:
                continue
            width = self.layouts[stream].bucket_seconds
            for idx in [i for i in series.open if (i + 1) * width <= wm]:
                series.closed[idx] = encode_sketch(series.open.pop(idx))
                done += 1
        return done

    def evict(self) -> int:
        """Drop buckets wholly behind the horizon (watermark - retention), and empty scopes.

        Returns:
            How many chunks and sketches were dropped.
        """
        horizon = self.horizon
        dropped = 0
        for (stream, scope), series in list(self._series.items()):
            width = self.layouts[stream].bucket_seconds
            for ci in [c for c in series.chunks if (c + 1) * CHUNK * width <= horizon]:
                del series.chunks[ci]
                dropped += 1
            for store in (series.open, series.closed):
                if store:
                    for idx in [i for i in store if (i + 1) * width <= horizon]:
                        del store[idx]
                        dropped += 1
            if series.empty():
                del self._series[(stream, scope)]
                self._hot.pop(stream, None)
                if scope:
                    label, _, value = scope.partition("=")
                    values = self._label_values.get((stream, label))
                    if values is not None:
                        values.discard(value)
                        if not values:
                            del self._label_values[(stream, label)]
        return dropped

    def bucket_slots(self) -> int:
        """How many (sum, count) bucket slots are allocated (chunks x CHUNK), to account memory."""
        return sum(len(s.chunks) for s in self._series.values()) * CHUNK

    def dump(self) -> bytes:
        """Every bucket, sketch and the watermark state as bytes (see `load`)."""
        meta_series: list[list[object]] = []
        blob = bytearray()
        for stream, scope in sorted(self._series):
            s = self._series[(stream, scope)]
            chunk_ids = sorted(s.chunks)
            for ci in chunk_ids:
                arr = s.chunks[ci]
                if not _LITTLE:  # pragma: no cover - the snapshot format is little-endian
                    arr = array("d", arr)
                    arr.byteswap()
                blob += arr.tobytes()
            closed_ids = sorted(s.closed) if s.closed else []
            closed_lens = []
            for idx in closed_ids:
                assert s.closed is not None
                closed_lens.append(len(s.closed[idx]))
                blob += s.closed[idx]
            open_bins = (
                [[idx, sorted(s.open[idx].items())] for idx in sorted(s.open)] if s.open else []
            )
            meta_series.append(
                [stream, scope, s.open is not None, chunk_ids, closed_ids, closed_lens, open_bins]
            )
        meta = orjson.dumps(
            {
                "max": self.max_time,
                "flushed": self.flushed_to,
                "first": self.first_seen,
                "series": meta_series,
            }
        )
        return struct.pack("<I", len(meta)) + meta + bytes(blob)

    def load(self, data: bytes) -> None:
        """Replace this store's content with what `dump` produced."""
        (n,) = struct.unpack_from("<I", data, 0)
        meta = orjson.loads(data[4 : 4 + n])
        pos = 4 + n
        self.max_time = meta["max"]
        self.flushed_to = meta["flushed"]
        # Snapshots from before first_seen existed: unknown, so no window is held back for it.
        self.first_seen = {k: float(v) for k, v in meta.get("first", {}).items()}
        self._series = {}
        self._label_values = {}
        self._hot = {}
        size = 16 * CHUNK
        for stream, scope, sketch, chunk_ids, closed_ids, closed_lens, open_bins in meta["series"]:
            s = self._new_series(stream, scope, sketch)
            for ci in chunk_ids:
                arr = array("d")
                arr.frombytes(data[pos : pos + size])
                if not _LITTLE:  # pragma: no cover
                    arr.byteswap()
                s.chunks[ci] = arr
                pos += size
            if s.closed is not None and s.open is not None:
                for idx, length in zip(closed_ids, closed_lens, strict=True):
                    s.closed[idx] = data[pos : pos + length]
                    pos += length
                for idx, items in open_bins:
                    s.open[idx] = {int(k): float(w) for k, w in items}
