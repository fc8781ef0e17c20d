"""Value-stream definition: stages, active vs waiting, and how workflow events move items."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast, get_args, get_type_hints

from stream_app.errors import ConfigError
from stream_app.events.model import ItemType, WorkflowEvent

StageKind = Literal["active", "waiting"]
Transition = Literal["enter", "leave", "link", "drop"]

STAGE_KINDS: tuple[str, ...] = get_args(StageKind)
TRANSITIONS: tuple[str, ...] = get_args(Transition)
ITEM_TYPES: tuple[str, ...] = get_args(ItemType)
# The actions WorkflowEvent can carry; a rule naming anything else could never match.
ACTIONS: tuple[str, ...] = get_args(get_type_hints(WorkflowEvent)["action"])

DEFAULT_RESOURCE = "valuestream.toml"


@dataclass(frozen=True, slots=True)
class StageDef:
    """One stage of the value stream, in order."""

    name: str
    kind: StageKind  # the state an item is in by default while in this stage
    aliases: tuple[str, ...] = ()  # other names producers use for it, e.g. "in-review"


@dataclass(frozen=True, slots=True)
class SourceRule:
    """How one kind of workflow event moves an item: matched on source type, action and outcome.

    ``stage`` fixes the stage; when absent the event's own ``stage`` is used, and ``default_stage``
    when the event's stage is not a known stage. ``state`` (active/waiting) overrides the stage's
    kind unless the event states its own.
    """

    source: str  # WorkflowEvent.source_type, or "*"
    action: str  # WorkflowEvent.action, or "*"
    transition: Transition
    stage: str | None = None
    default_stage: str | None = None
    state: StageKind | None = None
    outcome: str | None = None  # match only events with this outcome


@dataclass(frozen=True, slots=True)
class ValueStreamDef:
    """A parsed value-stream definition (see stream_app/data/valuestream.toml for every field)."""

    stages: tuple[StageDef, ...]
    rules: tuple[SourceRule, ...]
    flow_start_stage: str
    release_stage: str
    done_stages: tuple[str, ...] = ("production", "done")
    production_environments: tuple[str, ...] = ("production",)
    default_item_type: ItemType = "feature"
    create_items_from: tuple[str, ...] = ("workitem", "change")
    value_streams: dict[str, tuple[str, ...]] = field(default_factory=dict)
    retention_seconds: float = 90 * 86400.0
    max_open_items: int = 5000
    max_events_per_item: int = 200
    max_pending_events: int = 10000
    pending_seconds: float = 86400.0
    incident_link_max_gap_seconds: float = 86400.0
    source: str = "<built-in>"

    def stage_names(self) -> tuple[str, ...]:
        """The stage names in order."""
        return tuple(s.name for s in self.stages)

    def resolve_stage(self, name: str | None) -> str | None:
        """The stage called ``name`` or aliased by it (case-insensitive), or None when unknown."""
        if not name:
            return None
        key = name.strip().lower()
        for s in self.stages:
            if key == s.name or key in s.aliases:
                return s.name
        return None

    def is_done_stage(self, name: str | None) -> bool:
        """Whether entering ``name`` means the item is finished (e.g. "production", "done")."""
        return name is not None and name.strip().lower() in self.done_stages

    def stage_index(self, name: str) -> int:
        """Position of a defined stage in the stream (raises KeyError for an unknown one)."""
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        raise KeyError(name)

    def kind_of(self, name: str) -> StageKind:
        """Whether time in a defined stage counts as active or waiting by default."""
        return self.stages[self.stage_index(name)].kind

    def in_flow(self, name: str) -> bool:
        """Whether a stage is part of flow time (at or after the flow start stage)."""
        return self.stage_index(name) >= self.stage_index(self.flow_start_stage)

    def stream_of(self, service: str) -> str:
        """The value stream a service belongs to (a service not listed is its own value stream)."""
        for stream, services in self.value_streams.items():
            if service in services:
                return stream
        return service

    def rule_for(self, source: str, action: str, outcome: str | None) -> SourceRule | None:
        """The first rule matching an event's source type, action and outcome, or None."""
        for r in self.rules:
            if r.source not in ("*", source) or r.action not in ("*", action):
                continue
            if r.outcome is not None and r.outcome != outcome:
                continue
            return r
        return None


def parse_valuestream(text: str, source: str = "<string>") -> ValueStreamDef:
    """Parse a value-stream definition from TOML text.

    Args:
        text: the TOML document.
        source: where it came from (a path), named in error messages.

    Returns:
        The validated definition.

    Raises:
        ConfigError: the text is not TOML or a field is missing, misspelt or inconsistent.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
    return _build(doc, source)


def load_valuestream(path: Path | str | None = None) -> ValueStreamDef:
    """Load a value-stream definition file, or the bundled default when ``path`` is None.

    Args:
        path: a TOML file, or None for stream_app/data/valuestream.toml.

    Returns:
        The validated definition.

    Raises:
        ConfigError: the file cannot be read or is invalid.
    """
    if path is None:
        ref = resources.files("stream_app").joinpath("data", DEFAULT_RESOURCE)
        return parse_valuestream(ref.read_text(encoding="utf-8"), f"<bundled {DEFAULT_RESOURCE}>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read value-stream definition: {e}") from e
    return parse_valuestream(text, str(p))


def _err(source: str, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {msg}")


def _check_keys(source: str, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    # A misspelt key would otherwise silently fall back to a default; name it instead.
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _err(source, where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _str(source: str, where: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _err(source, where, f"expected a non-empty string, got {v!r}")
    return v.strip()


def _str_list(source: str, where: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise _err(source, where, f"expected a list of strings, got {v!r}")
    return tuple(_str(source, where, x) for x in v)


def _positive(source: str, where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise _err(source, where, f"expected a positive number, got {v!r}")
    return float(v)


def _positive_int(source: str, where: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise _err(source, where, f"expected a positive integer, got {v!r}")
    return v


def _build(doc: dict[str, Any], source: str) -> ValueStreamDef:
    _check_keys(source, "top level", doc, {"flow", "dora", "value_streams", "stage", "source"})
    stages = _parse_stages(doc.get("stage"), source)
    names = {s.name for s in stages}
    by_alias = {a: s.name for s in stages for a in (s.name, *s.aliases)}

    flow = doc.get("flow", {})
    if not isinstance(flow, dict):
        raise _err(source, "[flow]", "expected a table")
    _check_keys(
        source,
        "[flow]",
        flow,
        {
            "start_stage",
            "release_stage",
            "done_stages",
            "production_environments",
            "default_item_type",
            "create_items_from",
            "retention_days",
            "max_open_items",
            "max_events_per_item",
            "max_pending_events",
            "pending_hours",
        },
    )

    def stage_ref(where: str, v: Any) -> str:
        name = _str(source, where, v).lower()
        if name not in by_alias:
            raise _err(source, where, f"unknown stage {v!r}; stages: {[s.name for s in stages]}")
        return by_alias[name]

    start = stage_ref("[flow] start_stage", flow.get("start_stage", stages[0].name))
    release = stage_ref("[flow] release_stage", flow.get("release_stage", stages[-1].name))
    done = tuple(
        x.lower()
        for x in _str_list(
            source, "[flow] done_stages", flow.get("done_stages", ["production", "done"])
        )
    )
    clash = sorted(set(done) & set(by_alias))
    if clash:
        raise _err(source, "[flow] done_stages", f"{clash} are also stages; a done stage ends flow")
    envs = _str_list(
        source,
        "[flow] production_environments",
        flow.get("production_environments", ["production"]),
    )
    if not envs:
        raise _err(source, "[flow] production_environments", "needs at least one environment")
    item_type = _str(source, "[flow] default_item_type", flow.get("default_item_type", "feature"))
    if item_type not in ITEM_TYPES:
        raise _err(source, "[flow] default_item_type", f"{item_type!r} is not one of {ITEM_TYPES}")
    create_from = _str_list(
        source, "[flow] create_items_from", flow.get("create_items_from", ["workitem", "change"])
    )
    retention = _positive(source, "[flow] retention_days", flow.get("retention_days", 90)) * 86400
    max_open = _positive_int(source, "[flow] max_open_items", flow.get("max_open_items", 5000))
    max_events = _positive_int(
        source, "[flow] max_events_per_item", flow.get("max_events_per_item", 200)
    )
    max_pending = _positive_int(
        source, "[flow] max_pending_events", flow.get("max_pending_events", 10000)
    )
    pending = _positive(source, "[flow] pending_hours", flow.get("pending_hours", 24)) * 3600

    dora = doc.get("dora", {})
    if not isinstance(dora, dict):
        raise _err(source, "[dora]", "expected a table")
    _check_keys(source, "[dora]", dora, {"incident_link_max_gap_hours"})
    gap = _positive(
        source, "[dora] incident_link_max_gap_hours", dora.get("incident_link_max_gap_hours", 24)
    )

    streams_raw = doc.get("value_streams", {})
    if not isinstance(streams_raw, dict):
        raise _err(source, "[value_streams]", "expected a table of stream = [services]")
    streams: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for stream, services in streams_raw.items():
        svc = _str_list(source, f"[value_streams] {stream}", services)
        for s in svc:
            if s in owner and owner[s] != stream:
                raise _err(
                    source,
                    "[value_streams]",
                    f"service {s!r} is in both {owner[s]!r} and {stream!r}",
                )
            owner[s] = stream
        streams[str(stream)] = svc

    rules = _parse_rules(doc.get("source"), source, stage_ref)
    assert names  # _parse_stages guarantees at least one stage
    return ValueStreamDef(
        stages=stages,
        rules=rules,
        flow_start_stage=start,
        release_stage=release,
        done_stages=done,
        production_environments=envs,
        default_item_type=cast(ItemType, item_type),
        create_items_from=create_from,
        value_streams=streams,
        retention_seconds=retention,
        max_open_items=max_open,
        max_events_per_item=max_events,
        max_pending_events=max_pending,
        pending_seconds=pending,
        incident_link_max_gap_seconds=gap * 3600.0,
        source=source,
    )


def _parse_stages(raw: Any, source: str) -> tuple[StageDef, ...]:
    if not isinstance(raw, list) or not raw:
        raise _err(source, "[[stage]]", "at least one stage is required")
    out: list[StageDef] = []
    seen: set[str] = set()
    for i, t in enumerate(raw):
        where = f"[[stage]] #{i + 1}"
        if not isinstance(t, dict):
            raise _err(source, where, "expected a table")
        _check_keys(source, where, t, {"name", "kind", "aliases"})
        name = _str(source, f"{where} name", t.get("name")).lower()
        kind = _str(source, f"{where} ({name}) kind", t.get("kind"))
        if kind not in STAGE_KINDS:
            raise _err(source, f"{where} ({name}) kind", f"{kind!r} is not one of {STAGE_KINDS}")
        aliases = tuple(
            a.lower() for a in _str_list(source, f"{where} ({name}) aliases", t.get("aliases", []))
        )
        for n in (name, *aliases):
            if n in seen:
                raise _err(source, f"{where} ({name})", f"name or alias {n!r} is used twice")
            seen.add(n)
        out.append(StageDef(name=name, kind=cast(StageKind, kind), aliases=aliases))
    return tuple(out)


def _parse_rules(raw: Any, source: str, stage_ref: Any) -> tuple[SourceRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _err(source, "[[source]]", "expected an array of tables")
    out: list[SourceRule] = []
    for i, t in enumerate(raw):
        where = f"[[source]] #{i + 1}"
        if not isinstance(t, dict):
            raise _err(source, where, "expected a table")
        _check_keys(
            source,
            where,
            t,
            {"type", "action", "transition", "stage", "default_stage", "state", "outcome"},
        )
        src = _str(source, f"{where} type", t.get("type", "*"))
        action = _str(source, f"{where} action", t.get("action", "*"))
        if action != "*" and action not in ACTIONS:
            raise _err(source, f"{where} action", f"{action!r} is not one of {ACTIONS} or '*'")
        transition = _str(source, f"{where} transition", t.get("transition"))
        if transition not in TRANSITIONS:
            raise _err(source, f"{where} transition", f"{transition!r} is not one of {TRANSITIONS}")
        stage = stage_ref(f"{where} stage", t["stage"]) if "stage" in t else None
        default = (
            stage_ref(f"{where} default_stage", t["default_stage"])
            if "default_stage" in t
            else None
        )
        state = None
        if "state" in t:
            state = _str(source, f"{where} state", t["state"])
            if state not in STAGE_KINDS:
                raise _err(source, f"{where} state", f"{state!r} is not one of {STAGE_KINDS}")
        outcome = _str(source, f"{where} outcome", t["outcome"]) if "outcome" in t else None
        out.append(
            SourceRule(
                source=src,
                action=action,
                transition=cast(Transition, transition),
                stage=stage,
                default_stage=default,
                state=cast(StageKind | None, state),
                outcome=outcome,
            )
        )
    return tuple(out)
