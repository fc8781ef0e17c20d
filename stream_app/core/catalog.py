"""The KPI catalog: kpis.toml parsed and validated into frozen KpiSpecs (pure but load_catalog)."""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, get_args

from stream_app.core.types import Aggregation, Direction, KpiSpec, Level, Seasonality
from stream_app.errors import ConfigError
from stream_app.events.model import KpiSample

WEEK_SECONDS = 7 * 86400.0
DAY_SECONDS = 86400.0
DEFAULT_SCOPE_LABELS: tuple[str, ...] = ("region", "version")
DEFAULT_MAX_LABEL_VALUES = 32

# Keys a [[kpi]] table may hold; the same keys except name/aggregation/stream/... may be defaulted.
KPI_KEYS = frozenset(
    {
        "name",
        "aggregation",
        "stream",
        "numerator",
        "denominator",
        "quantile",
        "direction",
        "min_change",
        "baseline",
        "post",
        "max_horizon",
        "overlap",
        "bucket",
        "min_buckets",
        "min_samples",
        "critical",
        "seasonality",
        "allowed_lateness",
        "services",
        "level",
    }
)
# Identity fields make no sense as a default for every KPI.
DEFAULT_KEYS = KPI_KEYS - {"name", "stream", "numerator", "denominator", "quantile"}
TOP_KEYS = frozenset({"defaults", "scope", "kpi", "otlp"})
SCOPE_KEYS = frozenset({"labels", "max_values"})
OTLP_KEYS = frozenset({"labels", "first_point_window", "max_series", "metrics"})
OTLP_METRIC_KEYS = frozenset({"stream", "scale", "count_stream"})
DEFAULT_FIRST_POINT_WINDOW = 300.0
# The engine, guard and worker keep a product's KPI state under this key ("product:shop"), next to
# services' states under their own names.
PRODUCT_PREFIX = "product:"
DEFAULT_MAX_SERIES = 5_000

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class OtlpMetric:
    """Where one OTLP metric goes: its sample stream, a unit scale, and (histograms) the stream
    that receives its observation count."""

    stream: str
    scale: float = 1.0
    count_stream: str | None = None


@dataclass(frozen=True, slots=True)
class OtlpConfig:
    """The catalog's ``[otlp]`` table: how OTLP metrics become KPI samples.

    Attributes:
        metrics: explicit metric name -> target; other metrics map by name (`Catalog.otlp_target`).
        labels: data-point attributes kept as sample labels (None: the catalog's scope labels).
        first_point_window: the first cumulative point of a series counts in full when it started
            at most this long before it (a new process); else it is only the baseline.
        max_series: cumulative series remembered per service; beyond it the least recently
            updated are forgotten.
    """

    metrics: Mapping[str, OtlpMetric] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    first_point_window: float = DEFAULT_FIRST_POINT_WINDOW
    max_series: int = DEFAULT_MAX_SERIES


@dataclass(frozen=True, slots=True)
class Catalog:
    """The validated KPI catalog.

    Attributes:
        kpis: every KPI, in file order.
        scope_labels: sample labels that get their own buckets (so a scoped release has a control).
        max_label_values: at most this many values of one scope label are kept per stream.
        source: where the catalog came from (for messages).
    """

    kpis: tuple[KpiSpec, ...]
    scope_labels: tuple[str, ...] = DEFAULT_SCOPE_LABELS
    max_label_values: int = DEFAULT_MAX_LABEL_VALUES
    source: str = "kpis.toml"
    otlp: OtlpConfig = field(default_factory=OtlpConfig)
    # service -> the product (value stream) it belongs to; a service not listed is its own product.
    products: Mapping[str, str] = field(default_factory=dict)
    _by_stream: dict[str, tuple[KpiSpec, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _product_streams: frozenset[str] = field(
        default_factory=frozenset, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        index: dict[str, list[KpiSpec]] = {}
        for spec in self.kpis:
            for stream in spec.streams():
                index.setdefault(stream, []).append(spec)
        # Frozen dataclass: the index is derived once here so by_stream is O(1) on the hot path.
        object.__setattr__(self, "_by_stream", {s: tuple(v) for s, v in index.items()})
        product_streams = {s for k in self.kpis if k.level == "product" for s in k.streams()}
        object.__setattr__(self, "_product_streams", frozenset(product_streams))

    def with_products(self, value_streams: Mapping[str, Sequence[str]]) -> Catalog:
        """This catalog with the products of a value-stream definition (product -> services)."""
        members = {svc: p for p, services in value_streams.items() for svc in services}
        return replace(self, products=members)

    def product_of(self, service: str) -> str:
        """The product `service` belongs to (itself when no value stream lists it)."""
        return self.products.get(service, service)

    def has_product_kpis(self) -> bool:
        """Whether some KPI is measured at product level."""
        return bool(self._product_streams)

    def subject_of(self, sample: KpiSample) -> str:
        """The state a sample goes to: its product's (`product_key`) for a stream that product
        KPIs read, else its service's. A sample names its product, or its service's is taken."""
        if sample.kpi in self._product_streams:
            product = sample.product or self.products.get(sample.service, sample.service)
            return PRODUCT_PREFIX + product
        return sample.service

    def by_stream(self, stream: str) -> tuple[KpiSpec, ...]:
        """KPIs that read the sample stream `stream` (empty when none does)."""
        return self._by_stream.get(stream, ())

    def otlp_target(self, metric: str) -> OtlpMetric | None:
        """Where the OTLP metric `metric` goes: the ``[otlp.metrics]`` entry, else the stream of
        that name, else of that name with ``.``, ``-`` and ``/`` as ``_`` (``shop.orders`` ->
        ``shop_orders``) when a KPI reads it; None when no KPI reads it."""
        explicit = self.otlp.metrics.get(metric)
        if explicit is not None:
            return explicit
        for name in (metric, re.sub(r"[.\-/]", "_", metric)):
            if name in self._by_stream:
                return OtlpMetric(name)
        return None

    def otlp_labels(self) -> tuple[str, ...]:
        """Data-point attributes kept as sample labels."""
        return self.otlp.labels if self.otlp.labels is not None else self.scope_labels

    def streams(self) -> frozenset[str]:
        """Every sample stream some KPI reads."""
        return frozenset(self._by_stream)

    def for_service(self, service: str) -> tuple[KpiSpec, ...]:
        """KPIs judged on the state `service` keys: a service's service-level KPIs (those without
        a services list apply to every service), or for a `product_key` the product's."""
        if service.startswith(PRODUCT_PREFIX):
            product = service[len(PRODUCT_PREFIX) :]
            return tuple(
                k
                for k in self.kpis
                if k.level == "product" and (not k.services or product in k.services)
            )
        return tuple(
            k
            for k in self.kpis
            if k.level == "service" and (not k.services or service in k.services)
        )

    def retention_seconds(self) -> float:
        """How much event-time history the bucket store must keep behind the watermark.

        Baseline + maximum horizon, plus a week of history when a KPI may use a weekly reference
        (seasonality weekly or auto), or a day for daily, plus the allowed lateness, plus one
        bucket (a release between bucket boundaries shifts its windows by up to one bucket).
        """
        best = 0.0
        for k in self.kpis:
            seasonal = {"auto": WEEK_SECONDS, "weekly": WEEK_SECONDS, "daily": DAY_SECONDS}.get(
                k.seasonality, 0.0
            )
            need = (
                k.baseline_seconds
                + max(k.post_seconds, k.max_horizon_seconds)
                + seasonal
                + k.allowed_lateness_seconds
                + k.bucket_seconds
            )
            best = max(best, need)
        return best

    def allowed_lateness_seconds(self, service: str) -> float:
        """The lateness the watermark of `service` allows: the largest of its KPIs'."""
        return max((k.allowed_lateness_seconds for k in self.for_service(service)), default=0.0)


def product_key(product: str) -> str:
    """The state key of a product's KPIs (engine, guard, worker tables)."""
    return PRODUCT_PREFIX + product


def product_name(key: str) -> str | None:
    """The product of a `product_key`, None for a service's key."""
    return key[len(PRODUCT_PREFIX) :] if key.startswith(PRODUCT_PREFIX) else None


def parse_duration(value: object) -> float:
    """Seconds from a duration: a number of seconds or a string like "90s", "60m", "2h", "1d".

    Raises:
        ValueError: the value is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '60m' or seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"expected a duration like '60m', '1h' or '30s', got {value!r}")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration like '60m' or seconds, got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {value!r}")
    return seconds


def parse_fraction(value: object) -> float:
    """A fraction from "2%" or 0.02.

    Raises:
        ValueError: the value is neither a percentage string nor a number.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a fraction like 0.02 or '2%', got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _PERCENT.match(value)
        if m:
            return float(m.group(1)) / 100.0
    raise ValueError(f"expected a fraction like 0.02 or '2%', got {value!r}")


class _Errors:
    """Collects every problem of a file so the user fixes them in one go."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def unknown_keys(self, where: str, table: Mapping[str, Any], allowed: frozenset[str]) -> None:
        for key in sorted(set(table) - allowed):
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
            self.add(where, f"unknown key '{key}'{suffix}")

    def raise_if_any(self) -> None:
        if self.items:
            lines = "\n  ".join(self.items)
            raise ConfigError(f"{self.source}: invalid KPI catalog:\n  {lines}")


def _choice(errors: _Errors, where: str, key: str, value: object, options: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in options:
        return value
    errors.add(where, f"field '{key}': must be one of {', '.join(options)}, got {value!r}")
    return options[0]


def _int(errors: _Errors, where: str, key: str, value: object, minimum: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    errors.add(where, f"field '{key}': must be an integer >= {minimum}, got {value!r}")
    return minimum


def _stream_name(errors: _Errors, where: str, key: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and _NAME.match(value):
        return value
    errors.add(where, f"field '{key}': must be a name of [A-Za-z0-9_.:-], got {value!r}")
    return None


def _spec(errors: _Errors, where: str, table: Mapping[str, Any]) -> KpiSpec | None:
    """One KpiSpec from a merged (defaults + kpi) table, or None after recording errors."""
    before = len(errors.items)
    name = table["name"]
    agg = _choice(errors, where, "aggregation", table.get("aggregation"), get_args(Aggregation))
    direction = _choice(
        errors, where, "direction", table.get("direction", "up"), get_args(Direction)
    )
    seasonality = _choice(
        errors, where, "seasonality", table.get("seasonality", "auto"), get_args(Seasonality)
    )
    level = _choice(errors, where, "level", table.get("level", "service"), get_args(Level))

    durations: dict[str, float] = {}
    for key, default in (
        ("baseline", 14400.0),
        ("post", 600.0),
        ("max_horizon", 14400.0),
        ("overlap", 3600.0),
        ("bucket", 60.0),
    ):
        try:
            durations[key] = parse_duration(table.get(key, default))
        except ValueError as exc:
            errors.add(where, f"field '{key}': {exc}")
            durations[key] = default
    try:
        lateness = parse_duration(table.get("allowed_lateness", 300.0))
        if lateness < 0:
            errors.add(where, f"field 'allowed_lateness': must be >= 0, got {lateness:g}s")
    except ValueError as exc:
        errors.add(where, f"field 'allowed_lateness': {exc}")
        lateness = 0.0
    bucket = durations["bucket"]
    if bucket <= 0:
        errors.add(where, f"field 'bucket': must be > 0, got {table.get('bucket')!r}")
    else:
        for key in ("baseline", "post", "max_horizon"):
            n = durations[key] / bucket
            if durations[key] <= 0 or abs(n - round(n)) > 1e-9:
                errors.add(
                    where,
                    f"field '{key}': must be a positive multiple of the bucket ({bucket:g}s), "
                    f"got {durations[key]:g}s",
                )

    if durations["max_horizon"] < durations["post"]:
        errors.add(
            where,
            f"field 'max_horizon': must be at least 'post' ({durations['post']:g}s), "
            f"got {durations['max_horizon']:g}s",
        )
    if durations["overlap"] < 0:
        errors.add(where, f"field 'overlap': must be >= 0, got {durations['overlap']:g}s")
    try:
        min_change = parse_fraction(table.get("min_change", 0.02))
        if not 0.0 < min_change < 1.0:
            errors.add(where, f"field 'min_change': must be within (0, 1), got {min_change:g}")
    except ValueError as exc:
        errors.add(where, f"field 'min_change': {exc}")
        min_change = 0.02

    min_buckets = _int(errors, where, "min_buckets", table.get("min_buckets", 10), 1)
    min_samples = _int(errors, where, "min_samples", table.get("min_samples", 30), 0)
    if bucket > 0 and min_buckets > min(durations["baseline"], durations["post"]) / bucket + 1e-9:
        errors.add(
            where,
            f"field 'min_buckets': {min_buckets} is more than a window holds "
            f"({min(durations['baseline'], durations['post']) / bucket:g} buckets)",
        )
    critical = table.get("critical", False)
    if not isinstance(critical, bool):
        errors.add(where, f"field 'critical': must be true or false, got {critical!r}")
        critical = False

    services_raw = table.get("services", [])
    services: tuple[str, ...] = ()
    if isinstance(services_raw, list) and all(isinstance(s, str) and s for s in services_raw):
        services = tuple(services_raw)
    else:
        errors.add(
            where, f"field 'services': must be a list of service names, got {services_raw!r}"
        )

    stream = _stream_name(errors, where, "stream", table.get("stream"))
    numerator = _stream_name(errors, where, "numerator", table.get("numerator"))
    denominator = _stream_name(errors, where, "denominator", table.get("denominator"))
    quantile: float | None = None
    if agg == "ratio":
        if numerator is None or denominator is None:
            errors.add(where, "a ratio KPI needs both 'numerator' and 'denominator' streams")
        if "stream" in table:
            errors.add(where, "field 'stream': a ratio KPI reads 'numerator'/'denominator' instead")
    else:
        for key in ("numerator", "denominator"):
            if key in table:
                errors.add(where, f"field '{key}': only a ratio KPI has one")
        # A sum/mean/quantile KPI reads the stream of its own name unless told otherwise.
        stream = stream or (name if _NAME.match(name) else None)
    if agg == "quantile":
        q = table.get("quantile")
        if isinstance(q, int | float) and not isinstance(q, bool) and 0.0 < q < 1.0:
            quantile = float(q)
        else:
            errors.add(where, f"field 'quantile': a quantile KPI needs 0 < quantile < 1, got {q!r}")
    elif "quantile" in table:
        errors.add(where, "field 'quantile': only a quantile KPI has one")

    if len(errors.items) > before:
        return None
    return KpiSpec(
        name=name,
        aggregation=agg,  # type: ignore[arg-type]  # _choice checked it against the Literal
        stream=stream if agg != "ratio" else None,
        numerator=numerator if agg == "ratio" else None,
        denominator=denominator if agg == "ratio" else None,
        quantile=quantile,
        direction=direction,  # type: ignore[arg-type]  # checked by _choice
        min_change=min_change,
        baseline_seconds=durations["baseline"],
        post_seconds=durations["post"],
        max_horizon_seconds=durations["max_horizon"],
        overlap_seconds=durations["overlap"],
        bucket_seconds=bucket,
        min_buckets=min_buckets,
        min_samples=min_samples,
        critical=critical,
        seasonality=seasonality,  # type: ignore[arg-type]  # checked by _choice
        allowed_lateness_seconds=lateness,
        services=services,
        level=level,  # type: ignore[arg-type]  # checked by _choice
    )


def parse_catalog(toml_text: str, source: str = "kpis.toml") -> Catalog:
    """Parse and validate a KPI catalog.

    Args:
        toml_text: the TOML document (see the bundled ``stream_app/data/kpis.toml``).
        source: the file name used in error messages.

    Returns:
        The validated catalog.

    Raises:
        ConfigError: the text is not TOML or the catalog is invalid; the message names the file,
            the KPI and the field of every problem found.
    """
    try:
        doc = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    errors = _Errors(source)
    errors.unknown_keys("top level", doc, TOP_KEYS)

    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        errors.add("[defaults]", "must be a table")
        defaults = {}
    errors.unknown_keys("[defaults]", defaults, DEFAULT_KEYS)

    scope = doc.get("scope", {})
    if not isinstance(scope, dict):
        errors.add("[scope]", "must be a table")
        scope = {}
    errors.unknown_keys("[scope]", scope, SCOPE_KEYS)
    labels_raw = scope.get("labels", list(DEFAULT_SCOPE_LABELS))
    labels: tuple[str, ...] = DEFAULT_SCOPE_LABELS
    if isinstance(labels_raw, list) and all(isinstance(x, str) and x for x in labels_raw):
        labels = tuple(dict.fromkeys(labels_raw))
    else:
        errors.add("[scope]", f"field 'labels': must be a list of label names, got {labels_raw!r}")
    max_values = _int(
        errors, "[scope]", "max_values", scope.get("max_values", DEFAULT_MAX_LABEL_VALUES), 1
    )

    tables = doc.get("kpi", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        errors.add("top level", "'kpi' must be an array of tables ([[kpi]])")
        tables = []
    if not tables:
        errors.add("top level", "the catalog defines no KPI ([[kpi]] tables)")

    specs: list[KpiSpec] = []
    seen: set[str] = set()
    for i, table in enumerate(tables, start=1):
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            errors.add(
                f"kpi #{i}", f"field 'name': must be a name of [A-Za-z0-9_.:-], got {name!r}"
            )
            continue
        where = f"kpi '{name}'"
        if name in seen:
            errors.add(where, "duplicate KPI name")
            continue
        seen.add(name)
        errors.unknown_keys(where, table, KPI_KEYS)
        if "aggregation" not in table and "aggregation" not in defaults:
            errors.add(where, "field 'aggregation': missing (sum, mean, ratio or quantile)")
            continue
        spec = _spec(errors, where, {**defaults, **table})
        if spec is not None:
            specs.append(spec)

    # One bucket store per stream: every KPI reading a stream must agree on its bucket width.
    width: dict[str, tuple[float, str]] = {}
    for spec in specs:
        for stream in spec.streams():
            other = width.setdefault(stream, (spec.bucket_seconds, spec.name))
            if other[0] != spec.bucket_seconds:
                errors.add(
                    f"kpi '{spec.name}'",
                    f"field 'bucket': stream '{stream}' already uses {other[0]:g}s buckets "
                    f"(kpi '{other[1]}'); KPIs reading one stream must share the bucket width",
                )
    # A stream's samples go to one state: the product's or the service's (Catalog.subject_of).
    levels: dict[str, tuple[str, str]] = {}
    for spec in specs:
        for stream in spec.streams():
            other_level, other_name = levels.setdefault(stream, (spec.level, spec.name))
            if other_level != spec.level:
                errors.add(
                    f"kpi '{spec.name}'",
                    f"field 'level': stream '{stream}' is read at {other_level} level by kpi "
                    f"'{other_name}'; a stream is measured at one level",
                )
    otlp = _otlp(errors, doc.get("otlp", {}))
    errors.raise_if_any()
    return Catalog(
        kpis=tuple(specs),
        scope_labels=labels,
        max_label_values=max_values,
        source=source,
        otlp=otlp,
    )


def _otlp(errors: _Errors, table: object) -> OtlpConfig:
    """The ``[otlp]`` table (metric mapping for OTLP input), problems recorded in `errors`."""
    if not isinstance(table, dict):
        errors.add("[otlp]", "must be a table")
        return OtlpConfig()
    errors.unknown_keys("[otlp]", table, OTLP_KEYS)
    labels: tuple[str, ...] | None = None
    if "labels" in table:
        raw = table["labels"]
        if isinstance(raw, list) and all(isinstance(x, str) and x for x in raw):
            labels = tuple(dict.fromkeys(raw))
        else:
            errors.add("[otlp]", f"field 'labels': must be a list of attribute names, got {raw!r}")
    window = DEFAULT_FIRST_POINT_WINDOW
    try:
        window = parse_duration(table.get("first_point_window", window))
    except ValueError as exc:
        errors.add("[otlp]", f"field 'first_point_window': {exc}")
    max_series = _int(
        errors, "[otlp]", "max_series", table.get("max_series", DEFAULT_MAX_SERIES), 1
    )
    metrics: dict[str, OtlpMetric] = {}
    raw_metrics = table.get("metrics", {})
    if not isinstance(raw_metrics, dict):
        errors.add("[otlp]", "field 'metrics': must be a table of metric name = stream")
        raw_metrics = {}
    for metric, target in raw_metrics.items():
        where = f"[otlp.metrics] '{metric}'"
        if isinstance(target, str):
            target = {"stream": target}
        if not isinstance(target, dict):
            errors.add(where, f"must be a stream name or a table, got {target!r}")
            continue
        errors.unknown_keys(where, target, OTLP_METRIC_KEYS)
        stream = _stream_name(errors, where, "stream", target.get("stream"))
        if stream is None:
            if "stream" not in target:
                errors.add(where, "field 'stream': missing")
            continue
        count_stream = _stream_name(errors, where, "count_stream", target.get("count_stream"))
        scale = target.get("scale", 1.0)
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not (math.isfinite(scale) and scale > 0)
        ):
            errors.add(where, f"field 'scale': must be a number > 0, got {scale!r}")
            continue
        metrics[metric] = OtlpMetric(stream, float(scale), count_stream)
    return OtlpConfig(
        metrics=metrics, labels=labels, first_point_window=window, max_series=max_series
    )


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and parse the catalog at `path`, or the bundled example when `path` is None.

    Raises:
        ConfigError: the file cannot be read or is invalid.
    """
    if path is None:
        text = resources.files("stream_app").joinpath("data/kpis.toml").read_text("utf-8")
        return parse_catalog(text, source="stream_app/data/kpis.toml")
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read KPI catalog: {exc}") from exc
    return parse_catalog(text, source=str(path))
