"""Telemetry contract: one compact JSON KPI sample per message, decoded without pydantic.

Wire shape (key = service; a product-level sample's key is its product)::

    {"v": 1, "service": "checkout", "kpi": "orders", "time": 1764064800.0, "value": 3.0,
     "count": 1, "labels": {"region": "eu"}, "id": "optional", "product": "shop"}

``product`` (optional, 1-128 characters) names the product (value stream) a product-level sample is
measured for; without it a product-level stream's sample counts for its service's product. A sample
with a ``product`` may leave out ``service`` (it then stands for the product as a whole).

``time`` is POSIX seconds (a number) or an RFC 3339 string with an offset, in [0, 1e10) so that a
millisecond timestamp is caught instead of landing in the year 57000. ``count`` (default 1) must be
>= 0 (0: a period with no observations), ``value`` finite, ``labels`` at most 8 entries
(keys 1-64 characters, values up to 128),
``service`` and ``kpi`` 1-128 characters, ``id`` 1-256 characters or null. Unknown keys are
rejected. ``v`` is optional; any value other than 1 is rejected as ``unknown-schema-version``.

`sample_from_obj` is the decoder (plain checks on the orjson result, a few microseconds);
`TelemetrySample` is the equivalent pydantic model, used for the JSON Schema and in tests that
check both accept and reject the same payloads.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from stream_app.errors import DecodeError
from stream_app.events import (
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_NAME,
    RFC3339_PATTERN,
    Labels,
    Name,
    json_type,
    timestamp_seconds,
)
from stream_app.events.model import KpiSample

MAX_TIME = 1e10  # exclusive upper bound of epoch seconds (year 2286)
MAX_ID = 256
SAMPLE_KEYS = frozenset(
    {"v", "service", "kpi", "time", "value", "count", "labels", "id", "product"}
)


def _time_in_range(seconds: float) -> float:
    if not 0 <= seconds < MAX_TIME:
        raise ValueError(
            f"time {seconds!r} is outside [0, 1e10) epoch seconds (milliseconds sent?)"
        )
    return seconds


def _string_time_in_range(text: str) -> str:
    _time_in_range(timestamp_seconds(text))
    return text


def _not_bool(v: object) -> object:
    # Literal[1] would take True (True == 1 in Python); JSON true is not a version number.
    if isinstance(v, bool):
        raise ValueError("must be the number 1, not a boolean")
    return v


SchemaVersion = Annotated[Literal[1], BeforeValidator(_not_bool)]
EpochSeconds = Annotated[float, Field(ge=0, lt=MAX_TIME, allow_inf_nan=False)]
SampleTimestamp = Annotated[
    str,
    Field(pattern=RFC3339_PATTERN, json_schema_extra={"format": "date-time"}),
    AfterValidator(_string_time_in_range),
]


class TelemetrySample(BaseModel):
    """One KPI sample (the schema of the telemetry topic)."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        title="TelemetrySample",
        json_schema_extra={"anyOf": [{"required": ["service"]}, {"required": ["product"]}]},
    )

    v: SchemaVersion = Field(default=1, description="Schema version.")
    service: Name | None = Field(
        default=None, description="The service measured; may be left out when product is given."
    )
    product: Name | None = Field(
        default=None,
        description="The product (value stream) of a product-level sample; default: the "
        "service's product.",
    )
    kpi: Name = Field(description="Sample stream name, e.g. 'orders', 'latency_ms'.")
    time: EpochSeconds | SampleTimestamp = Field(
        description="Epoch seconds or RFC 3339 with offset."
    )
    value: float = Field(allow_inf_nan=False)
    count: float = Field(
        default=1.0, ge=0, allow_inf_nan=False, description="Observations summed (0: none)."
    )
    labels: Labels | None = None
    id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID)] | None = None

    @model_validator(mode="after")
    def _service_or_product(self) -> TelemetrySample:
        """A sample names its service, its product, or both."""
        if self.service is None and self.product is None:
            raise ValueError("service: required unless product is given")
        return self

    def to_sample(self) -> KpiSample:
        """The internal sample."""
        t = timestamp_seconds(self.time) if isinstance(self.time, str) else self.time
        service = self.service if self.service is not None else self.product
        assert service is not None  # model_post_init
        return KpiSample(
            service=service,
            kpi=self.kpi,
            time=float(t),
            value=float(self.value),
            count=float(self.count),
            labels=dict(self.labels or {}),
            id=self.id,
            product=self.product,
        )


def _invalid(detail: str) -> DecodeError:
    return DecodeError("schema-invalid", detail)


def _name(obj: dict[str, Any], key: str) -> str:
    s = obj.get(key)
    if type(s) is not str:
        raise _invalid(f"{key}: required string, got {json_type(s) if key in obj else 'nothing'}")
    if not 0 < len(s) <= MAX_NAME:
        reason = "too-long" if s else "schema-invalid"
        raise DecodeError(reason, f"{key}: must be 1 to {MAX_NAME} characters, got {len(s)}")
    return s


def _number(obj: dict[str, Any], key: str, default: float | None = None) -> float:
    x = obj.get(key, default)
    if type(x) is not float and type(x) is not int:  # bool is not a number here
        raise _invalid(f"{key}: required number, got {json_type(x) if key in obj else 'nothing'}")
    f = float(x)
    if not math.isfinite(f):
        raise DecodeError("non-finite", f"{key}: must be finite, got {f!r}")
    return f


def _time(obj: dict[str, Any]) -> float:
    t = obj.get("time")
    if type(t) is str:
        try:
            seconds = timestamp_seconds(t)
        except ValueError as exc:
            raise _invalid(f"time: {exc}") from None
    elif type(t) is float or type(t) is int:
        seconds = float(t)
        if not math.isfinite(seconds):
            raise DecodeError("non-finite", f"time: must be finite, got {seconds!r}")
    else:
        got = json_type(t) if "time" in obj else "nothing"
        raise _invalid(f"time: required epoch seconds (number) or RFC 3339 string, got {got}")
    if not 0 <= seconds < MAX_TIME:
        raise _invalid(f"time: {seconds!r} is outside [0, 1e10) epoch seconds (milliseconds sent?)")
    return seconds


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    labels = obj.get("labels")
    if labels is None:
        return {}
    if type(labels) is not dict:
        raise _invalid(f"labels: must be an object of strings, got {json_type(labels)}")
    if len(labels) > MAX_LABELS:
        raise DecodeError(
            "too-many-labels", f"labels: at most {MAX_LABELS} entries, got {len(labels)}"
        )
    for k, val in labels.items():
        if not 0 < len(k) <= MAX_LABEL_KEY:
            raise DecodeError(
                "too-long" if k else "schema-invalid",
                f"labels: key {k[:80]!r} must be 1 to {MAX_LABEL_KEY} characters",
            )
        if type(val) is not str:
            raise _invalid(f"labels.{k[:80]}: must be a string, got {json_type(val)}")
        if len(val) > MAX_LABEL_VALUE:
            raise DecodeError(
                "too-long", f"labels.{k}: at most {MAX_LABEL_VALUE} characters, got {len(val)}"
            )
    return labels


def sample_from_obj(obj: object) -> KpiSample:
    """Check a parsed telemetry message and build the sample (the hot path).

    Args:
        obj: the orjson-parsed message value.

    Raises:
        DecodeError: ``schema-invalid``, ``non-finite``, ``invalid-value`` (negative count),
            ``too-long``, ``too-many-labels`` or ``unknown-schema-version``.
    """
    if type(obj) is not dict:
        raise _invalid(f"a telemetry sample is a JSON object, got {json_type(obj)}")
    if not SAMPLE_KEYS.issuperset(obj):
        unknown = sorted(str(k)[:40] for k in obj if k not in SAMPLE_KEYS)
        raise _invalid(
            f"unknown field(s) {', '.join(unknown[:5])}; allowed: {', '.join(sorted(SAMPLE_KEYS))}"
        )
    v = obj.get("v", 1)
    if type(v) is not int or v != 1:
        raise DecodeError(
            "unknown-schema-version", f"v: {str(v)[:20]!r}; this consumer reads version 1"
        )
    product = _name(obj, "product") if obj.get("product") is not None else None
    service = _name(obj, "service") if product is None or "service" in obj else product
    kpi = _name(obj, "kpi")
    time = _time(obj)
    value = _number(obj, "value")
    count = _number(obj, "count", 1.0)
    if count < 0:
        raise DecodeError("invalid-value", f"count: must be >= 0, got {count!r}")
    labels = _labels(obj)
    sample_id = obj.get("id")
    if sample_id is not None and (type(sample_id) is not str or not 0 < len(sample_id) <= MAX_ID):
        reason = "too-long" if type(sample_id) is str and sample_id else "schema-invalid"
        raise DecodeError(reason, f"id: must be a string of 1 to {MAX_ID} characters or null")
    return KpiSample(service, kpi, time, value, count, labels, sample_id, product)


def sample_to_obj(s: KpiSample) -> dict[str, Any]:
    """The compact wire object of a sample (``count`` 1, empty labels and no id left out)."""
    out: dict[str, Any] = {"service": s.service, "kpi": s.kpi, "time": s.time, "value": s.value}
    if s.count != 1.0:
        out["count"] = s.count
    if s.labels:
        out["labels"] = s.labels
    if s.id is not None:
        out["id"] = s.id
    if s.product is not None:
        out["product"] = s.product
    return out
