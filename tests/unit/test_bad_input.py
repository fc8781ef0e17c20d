"""The bad-input catalogue: each class of bad input and its dead-letter reason (decode + Pipeline).

`CASES` is the table (shared with tests/integration/test_bad_input_e2e.py, which sends every case
to a real worker). A case may need good messages first (``before``): the original of a duplicate,
the services that fill the limit. README.md's "Bad input" table lists the same classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_app.codec import REASONS, Rejected, Role, decode, encode
from stream_app.core.catalog import load_catalog, parse_catalog
from stream_app.core.guard import GUARD_REASONS, Limits
from stream_app.events.model import Incident, KpiSample, Release, WorkflowEvent
from stream_app.pipeline import DEADLETTER_OUTCOMES, Pipeline, Step

T0 = 1764064800.0  # 2025-11-25T10:00:00Z
NOW = T0 + 3600.0  # the wall clock the unit pipeline is given (the worker uses the real one)
MAX_BYTES = 4096
KNOWN = ("s0", "s1", "s2", "s3", "s4", "s5")  # VALUELOOP_KNOWN_SERVICES of these tests
LIMITS = Limits(
    max_services=5,
    max_kpis_per_service=3,
    max_label_values=2,
    known_services=frozenset(KNOWN),
)
# The settings that give a worker the same limits (the e2e test starts one with them).
LIMITS_ENV = {
    "VALUELOOP_MAX_SERVICES": "5",
    "VALUELOOP_MAX_KPIS_PER_SERVICE": "3",
    "VALUELOOP_MAX_LABEL_VALUES": "2",
    "VALUELOOP_KNOWN_SERVICES": ",".join(KNOWN),
    "VALUELOOP_MAX_MESSAGE_BYTES": str(MAX_BYTES),
}
Message = tuple[Role, bytes, tuple[tuple[str, bytes], ...]]


def sample(service: str = "s0", kpi: str = "orders", **over: Any) -> dict[str, Any]:
    return {"service": service, "kpi": kpi, "time": T0, "value": 1.0, **over}


def js(obj: Any) -> bytes:
    return orjson.dumps(obj)


def tel(obj: dict[str, Any]) -> Message:
    return ("telemetry", js(obj), ())


def release(rid: str = "rel-1", service: str = "s0", **over: Any) -> Release:
    fields: dict[str, Any] = {"version": "1.0.0", "time": T0, "kind": "deployed", **over}
    return Release(id=rid, service=service, **fields)


def doc(event: Release | WorkflowEvent | Incident) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(encode(event))
    return out


def dep(obj: dict[str, Any], headers: tuple[tuple[str, bytes], ...] = ()) -> Message:
    return ("deployments", js(obj), headers)


def with_context(d: dict[str, Any], **ctx: Any) -> dict[str, Any]:
    return {**d, "context": {**d["context"], **ctx}}


def structured(d: dict[str, Any], **over: Any) -> dict[str, Any]:
    ctx = d["context"]
    ce = {
        "specversion": "1.0",
        "id": ctx["id"],
        "source": ctx["source"],
        "type": ctx["type"],
        "datacontenttype": "application/json",
        "data": d,
    }
    return {**ce, **over}


def binary(d: dict[str, Any], **over: bytes) -> tuple[tuple[str, bytes], ...]:
    ctx = d["context"]
    h = {"specversion": b"1.0", "id": ctx["id"].encode(), "source": b"/ci", "type": ctx["type"]}
    h = {k: v.encode() if isinstance(v, str) else v for k, v in {**h, **over}.items()}
    return tuple((f"ce_{k}", v) for k, v in h.items())


WORK = WorkflowEvent(
    id="wf-dup",
    time=T0,
    service="s0",
    item_id="ITEM-1",
    item_type="feature",
    stage="dev",
    action="entered",
    state="active",
)
INCIDENT = Incident(id="inc-dup", incident_id="INC-1", time=T0, service="s0", action="detected")
GOOD = js(sample())
CUT = js(sample(kpi="é"))
REL = doc(release())


@dataclass(frozen=True)
class Case:
    """One class of bad input: the message, the reason it is dead-lettered with, its setup."""

    name: str  # the class, as in README.md's table
    reason: str
    message: Message
    before: tuple[Message, ...] = ()  # good messages that must be processed first


FILL = tuple(tel(sample(f"s{i}", time=T0 - 60)) for i in range(5))  # admits s0..s4: the limit
CASES: list[Case] = [
    Case("empty message (tombstone)", "empty", ("telemetry", b"", ())),
    Case("not JSON", "not-json", ("telemetry", b"this is not json {", ())),
    Case("invalid UTF-8", "invalid-utf8", ("telemetry", GOOD.replace(b"s0", b"s\xff"), ())),
    Case("truncated JSON", "truncated", ("telemetry", GOOD[: len(GOOD) // 2], ())),
    Case(
        "truncated inside a UTF-8 character",
        "truncated",
        ("telemetry", CUT[: CUT.index("é".encode()) + 1], ()),
    ),
    Case("oversized (VALUELOOP_MAX_MESSAGE_BYTES)", "oversized", tel(sample(x="y" * MAX_BYTES))),
    Case("NaN", "non-finite", ("telemetry", GOOD.replace(b'"value":1.0', b'"value":NaN'), ())),
    Case(
        "Infinity",
        "non-finite",
        ("telemetry", GOOD.replace(b'"value":1.0', b'"value":-Infinity'), ()),
    ),
    Case(
        "number beyond the float range",
        "non-finite",
        ("telemetry", GOOD.replace(b'"value":1.0', b'"value":1e999'), ()),
    ),
    Case("negative count", "invalid-value", tel(sample(count=-1))),
    Case("wrong type (sample value as a string)", "schema-invalid", tel(sample(value="3"))),
    Case(
        "wrong type (CDEvent timestamp as a number)",
        "schema-invalid",
        dep(with_context(REL, timestamp=T0)),
    ),
    Case(
        "missing field (sample without kpi)",
        "schema-invalid",
        tel({k: v for k, v in sample().items() if k != "kpi"}),
    ),
    Case(
        "missing field (CDEvent without subject)",
        "schema-invalid",
        dep({"context": REL["context"]}),
    ),
    Case("unknown field in a sample", "schema-invalid", tel(sample(region="eu"))),
    Case(
        "unknown CloudEvents type",
        "unknown-type",
        dep(structured(REL, type="com.example.order.placed")),
    ),
    Case(
        "binary-mode CloudEvent of an unknown ce_type",
        "unknown-type",
        dep(REL, binary(REL, type=b"com.example.order.placed")),
    ),
    Case(
        "binary-mode CloudEvent with a non-UTF-8 header",
        "invalid-utf8",
        dep(doc(release("rel-header")), binary(doc(release("rel-header")), subject=b"\xff")),
    ),
    Case(
        "unknown CDEvents type version",
        "unknown-type",
        dep(with_context(REL, type="dev.cdevents.service.deployed.0.9.0")),
    ),
    Case(
        "unknown CloudEvents specversion",
        "unknown-specversion",
        dep(structured(REL, specversion="0.3")),
    ),
    Case(
        "unknown CDEvents spec version",
        "unknown-specversion",
        dep(with_context(REL, version="0.9.0")),
    ),
    Case("unknown sample schema version", "unknown-schema-version", tel(sample(v=2))),
    Case(
        "CloudEvents attributes disagree with the CDEvent",
        "envelope-mismatch",
        dep(structured(REL, id="another-id")),
    ),
    Case("event on the wrong topic", "wrong-topic", ("telemetry", js(REL), ())),
    Case("timestamp in milliseconds", "schema-invalid", tel(sample(time=T0 * 1000))),
    Case("timestamp far in the past (before 2000)", "time-in-past", tel(sample(time=86400.0))),
    Case(
        "timestamp far in the future (over a day ahead of the clock)",
        "time-in-future",
        tel(sample(time=4e9)),
    ),
    Case(
        "release far in the future",
        "time-in-future",
        dep(doc(release("rel-future", time=4e9))),
    ),
    Case(
        "too many labels",
        "too-many-labels",
        tel(sample(labels={f"k{i}": "v" for i in range(9)})),
    ),
    Case(
        "too many scope labels on a release",
        "too-many-labels",
        dep(doc(release("rel-scope", scope={f"k{i}": "v" for i in range(9)}))),
    ),
    Case("absurdly long service name", "too-long", tel(sample("s" * 1000))),
    Case("absurdly long KPI name", "too-long", tel(sample(kpi="k" * 1000))),
    Case("absurdly long label value", "too-long", tel(sample(labels={"region": "x" * 1000}))),
    Case("absurdly long label name", "too-long", tel(sample(labels={"r" * 1000: "eu"}))),
    Case("absurdly long sample id", "too-long", tel(sample(id="i" * 1000))),
    Case("absurdly long event id", "too-long", dep(with_context(REL, id="r" * 1000))),
    Case(
        "absurdly long release version",
        "too-long",
        dep(doc(release("rel-long", version="v" * 1000))),
    ),
    Case(
        "absurdly long commit id on a release",
        "too-long",
        dep(doc(release("rel-commit", commits=("c" * 1000,)))),
    ),
    Case("KPI not in the catalog", "unknown-stream", tel(sample(kpi="bogus"))),
    Case("sample of an unknown service", "unknown-service", tel(sample("stranger"))),
    Case(
        "release of an unknown service (known-services list set)",
        "unknown-service",
        dep(doc(release("rel-stranger", "stranger"))),
    ),
    Case(
        "duplicated sample id (producer retry)",
        "duplicate",
        tel(sample(id="dup-1", time=T0 + 60)),
        (tel(sample(id="dup-1", time=T0 + 60)),),
    ),
    Case(
        "duplicated release id",
        "duplicate",
        dep(doc(release("rel-dup"))),
        (dep(doc(release("rel-dup"))),),
    ),
    Case(
        "duplicated workflow event id",
        "duplicate",
        ("workflow", encode(WORK), ()),
        (("workflow", encode(WORK), ()),),
    ),
    Case(
        "duplicated incident event id",
        "duplicate",
        ("incidents", encode(INCIDENT), ()),
        (("incidents", encode(INCIDENT), ()),),
    ),
    Case("a service beyond the limit", "too-many-services", tel(sample("s5")), FILL),
    Case(
        "a KPI stream beyond the limit per service",
        "too-many-kpis",
        tel(sample("s1", "cart_value")),
        tuple(tel(sample("s1", k, time=T0 - 60)) for k in ("orders", "revenue", "sessions")),
    ),
    Case(
        "a label value beyond the limit per KPI",
        "too-many-label-values",
        tel(sample("s2", labels={"region": "ap"}, time=T0 + 120)),
        tuple(tel(sample("s2", labels={"region": r}, time=T0 + 120)) for r in ("eu", "us")),
    ),
]


def pipeline(limits: Limits = LIMITS) -> Pipeline:
    return Pipeline(load_catalog(), limits=limits, clock=lambda: NOW)


def feed(p: Pipeline, message: Message) -> Rejected | Step:
    """What the worker's edge does with one message: decode, then the pipeline."""
    role, value, headers = message
    decoded = decode(role, value, list(headers), max_bytes=MAX_BYTES)
    if isinstance(decoded, Rejected):
        return decoded
    return p.handle(decoded)


def reason_of(result: Rejected | Step) -> str | None:
    if isinstance(result, Rejected):
        return result.reason
    return result.outcome if result.rejected else None


def test_the_catalogue_has_at_least_fifteen_classes_and_bounded_reasons() -> None:
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names) >= 15
    # Each bad message is told apart in the dead-letter topic by its bytes (the e2e test).
    assert len({(c.message[1], c.message[2]) for c in CASES}) == len(CASES)
    for c in CASES:
        assert c.reason in REASONS or c.reason in DEADLETTER_OUTCOMES, c
        assert len(c.message[1]) <= MAX_BYTES or c.reason == "oversized", c.name
    assert set(GUARD_REASONS) <= DEADLETTER_OUTCOMES


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_class_is_dead_lettered_with_its_reason(case: Case) -> None:
    p = pipeline()
    for good in case.before:
        assert reason_of(feed(p, good)) is None, good
    assert reason_of(feed(p, case.message)) == case.reason


def test_all_classes_in_one_stream_then_good_input_is_still_accepted() -> None:
    """As the e2e test sends them: every setup first, then every bad message, then good ones."""
    p = pipeline()
    setups = list(dict.fromkeys(m for c in CASES for m in c.before))
    for good in setups:
        assert reason_of(feed(p, good)) is None, good
    got = [reason_of(feed(p, c.message)) for c in CASES]
    assert got == [c.reason for c in CASES]
    for i in range(2000):
        s = sample(f"s{i % 5}", time=T0 + 180 + i // 10, id=f"good-{i}")
        assert reason_of(feed(p, tel(s))) is None


def test_a_duplicate_counts_once_in_the_buckets() -> None:
    p = pipeline(Limits())
    s = KpiSample("checkout", "orders", T0, 5.0, id="retry-me")
    assert p.handle(s).outcome == "accepted"
    assert p.handle(KpiSample("checkout", "orders", T0, 5.0, id="retry-me")).outcome == "duplicate"
    assert p.handle(s).outcome == "duplicate"  # the very same object again
    buckets = p.engine._states["checkout"].buckets
    assert sum(buckets.read("orders", "", int(T0 // 60), int(T0 // 60) + 1).sums) == 5.0


def test_remembered_ids_are_bounded_by_the_lateness_horizon() -> None:
    p = pipeline(Limits())
    for i in range(20_000):  # a sample with an id every second for 5.5 hours
        assert p.handle(KpiSample("checkout", "orders", T0 + i, 1.0, id=f"id-{i}")).outcome == (
            "accepted"
        )
    ids = p.guard._services["checkout"].ids
    # 5 minutes of allowed lateness + one bucket (1 minute), at one id a second.
    assert len(ids) <= 5 * 60 + 60 + 2  # (the check runs before the sample moves the watermark)
    # A retry older than the horizon is late in the engine: still never counted twice.
    assert p.handle(KpiSample("checkout", "orders", T0, 1.0, id="id-0")).outcome == "late"
    # A hard cap bounds them even for a flood within the horizon.
    capped = pipeline(Limits(max_ids_per_service=100))
    for i in range(1000):
        capped.handle(KpiSample("checkout", "orders", T0, 1.0, id=f"x-{i}"))
    assert len(capped.guard._services["checkout"].ids) <= 100


def test_duplicate_ids_survive_a_restart_from_the_service_snapshot() -> None:
    first = pipeline(Limits())
    first.handle(KpiSample("checkout", "orders", T0, 1.0, id="before-restart"))
    snap = first.snapshot_service("checkout")
    second = pipeline(Limits(max_services=1))
    second.handle(KpiSample("other", "orders", T0, 1.0))  # the only room is taken
    second.restore_service("checkout", snap)
    # Admitted again whatever the limit, and the retry is recognised.
    again = second.handle(KpiSample("checkout", "orders", T0, 1.0, id="before-restart"))
    assert again.outcome == "duplicate"
    assert second.handle(KpiSample("checkout", "orders", T0, 1.0, id="new")).outcome == "accepted"
    # A bare engine snapshot (written before the guard existed) restores too.
    third = pipeline(Limits())
    third.restore_service("checkout", first.engine.snapshot("checkout"))
    assert third.guard.admitted("checkout")


def test_a_release_of_a_service_without_kpis_is_kept_for_dora_without_a_known_list() -> None:
    """The decision: without VALUELOOP_KNOWN_SERVICES such a release counts for DORA."""
    catalog = parse_catalog(
        '[[kpi]]\nname = "orders"\naggregation = "sum"\nservices = ["checkout"]\n'
    )
    p = Pipeline(catalog, limits=Limits(), clock=lambda: NOW)
    step = p.handle(release("rel-batch", "batch-jobs"))
    assert step.outcome == "accepted" and not step.rejected
    assert p.dora.on_release(release("rel-batch", "batch-jobs")) == "duplicate"  # DORA has it
    # Its samples cannot be judged: no KPI applies.
    assert p.handle(KpiSample("batch-jobs", "orders", T0, 1.0)).outcome == "out-of-scope"


def test_an_event_carrying_over_a_thousand_commits_is_too_long() -> None:
    value = encode(release("rel-commits", commits=tuple(str(i) for i in range(1001))))
    r = decode("deployments", value)
    assert isinstance(r, Rejected) and r.reason == "too-long" and "commits" in r.detail
    ok = decode("deployments", encode(release("rel-ok", commits=tuple(map(str, range(1000))))))
    assert isinstance(ok, Release)


def test_readme_documents_every_class() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Bad input", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| `([a-z0-9-]+)` \|", section, re.MULTILINE)
    documented = {reason for _, reason in rows}
    for c in CASES:
        assert c.reason in documented, f"README lacks a row for {c.reason} ({c.name})"
