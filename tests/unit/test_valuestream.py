"""The value-stream definition file: bundled default, event-to-stage rules, clear config errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.core.valuestream import load_valuestream, parse_valuestream
from stream_app.errors import ConfigError

MINIMAL = """
[[stage]]
name = "dev"
kind = "active"

[[stage]]
name = "waiting-for-qa"
kind = "waiting"
"""


def test_bundled_default_has_ordered_stages_with_active_and_waiting_kinds() -> None:
    d = load_valuestream()
    assert d.stage_names() == (
        "backlog",
        "dev",
        "review",
        "build",
        "test",
        "waiting-for-qa",
        "qa",
        "deploy",
    )
    assert d.kind_of("review") == "active"
    assert d.kind_of("waiting-for-qa") == "waiting"
    assert d.flow_start_stage == "dev" and not d.in_flow("backlog") and d.in_flow("qa")
    assert d.release_stage == "deploy"
    assert d.incident_link_max_gap_seconds == 24 * 3600
    assert "production" in d.production_environments


@pytest.mark.parametrize(
    ("source", "action", "outcome", "transition", "stage", "state"),
    [
        ("change", "created", None, "enter", "dev", None),
        ("change", "merged", None, "leave", "review", None),
        ("change", "started", "updated", "link", None, None),
        ("change", "started", "reviewed", "enter", None, None),
        ("artifact", "created", None, "link", None, None),
        ("pipelinerun", "queued", None, "enter", None, "waiting"),
        ("pipelinerun", "started", None, "enter", None, "active"),
        ("pipelinerun", "finished", None, "leave", None, None),
        ("testsuiterun", "started", None, "enter", "test", "active"),
        ("artifact", "published", None, "enter", "deploy", None),
        ("workitem", "entered", None, "enter", None, None),
        ("change", "finished", "abandoned", "drop", None, None),
    ],
)
def test_default_rules_map_cdevents_to_stage_transitions(
    source: str,
    action: str,
    outcome: str | None,
    transition: str,
    stage: str | None,
    state: str | None,
) -> None:
    rule = load_valuestream().rule_for(source, action, outcome)
    assert rule is not None
    assert (rule.transition, rule.stage, rule.state) == (transition, stage, state)


def test_pipeline_runs_without_a_known_stage_fall_back_to_build() -> None:
    rule = load_valuestream().rule_for("pipelinerun", "queued", None)
    assert rule is not None and rule.default_stage == "build"


def test_stage_aliases_resolve_case_insensitively_and_done_stages_are_not_stages() -> None:
    d = load_valuestream()
    assert d.resolve_stage("In-Review") == "review"
    assert d.resolve_stage("ready-for-qa") == "waiting-for-qa"
    assert d.resolve_stage("nowhere") is None
    assert d.resolve_stage("production") is None and d.is_done_stage("Production")


def test_minimal_file_gets_defaults_and_value_streams_group_services() -> None:
    d = parse_valuestream(MINIMAL + '\n[value_streams]\nshop = ["cart", "checkout"]\n', "x.toml")
    assert d.flow_start_stage == "dev"
    assert d.release_stage == "waiting-for-qa"  # the last stage when not given
    assert d.stream_of("cart") == "shop" and d.stream_of("search") == "search"
    assert d.rules == ()


def test_load_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    p = tmp_path / "vs.toml"
    p.write_text(MINIMAL + '\n[flow]\nstart_stage = "qa"\n')
    with pytest.raises(ConfigError, match=r"vs\.toml.*start_stage.*unknown stage 'qa'"):
        load_valuestream(p)
    p.write_text(MINIMAL)
    assert load_valuestream(p).stage_names() == ("dev", "waiting-for-qa")
    with pytest.raises(ConfigError, match="cannot read"):
        load_valuestream(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[stage]\n", "not valid TOML"),
        ("[flow]\n", "at least one stage"),
        ('[[stage]]\nname = "dev"\nkind = "busy"\n', "'busy' is not one of"),
        (MINIMAL + '[[stage]]\nname = "dev"\nkind = "active"\n', "'dev' is used twice"),
        ('[[stage]]\nname = "dev"\nkinds = "active"\n', r"unknown key\(s\) \['kinds'\]"),
        (MINIMAL + "[flow]\nretention_days = -1\n", "retention_days: expected a positive"),
        (MINIMAL + '[flow]\ndone_stages = ["dev"]\n', "also stages"),
        (MINIMAL + '[flow]\ndefault_item_type = "epic"\n', "'epic' is not one of"),
        (MINIMAL + '[[source]]\naction = "reviewed"\ntransition = "enter"\n', "'reviewed'"),
        (MINIMAL + '[[source]]\naction = "started"\ntransition = "jump"\n', "'jump'"),
        (MINIMAL + '[[source]]\naction = "started"\ntransition = "enter"\nstage = "ops"\n', "ops"),
        (MINIMAL + '[value_streams]\na = ["x"]\nb = ["x"]\n', "'x' is in both"),
        (MINIMAL + "[dora]\nincident_link_max_gap_hours = 0\n", "positive"),
        (MINIMAL + "[flow]\npending_hours = 0\n", "pending_hours: expected a positive"),
        (MINIMAL + "[surprise]\n", r"top level: unknown key"),
    ],
)
def test_bad_definitions_raise_config_errors_that_say_what_is_wrong(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        parse_valuestream(text, "team.toml")
    assert str(exc.value).startswith("team.toml:")
