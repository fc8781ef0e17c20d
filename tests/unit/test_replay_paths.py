"""`valueloop replay` (Pipeline) and the engine-only replay the accuracy tests use must agree."""

from __future__ import annotations

from stream_app import simulate
from stream_app.core.catalog import load_catalog
from stream_app.core.replay import replay_events
from stream_app.pipeline import Pipeline
from stream_app.replay import ReplayOutcome, replay

DAY = 86400.0
START = 1717480800.0


def test_the_cli_replay_and_the_engine_replay_give_the_same_verdicts() -> None:
    day = START - 6 * 3600 + DAY
    sc = simulate.Scenario(
        seed=5,
        start=START,
        duration_seconds=day + 12 * 3600 - START,
        services=(simulate.service_profile("checkout"),),
        releases=(
            simulate.PlannedRelease(
                "checkout", day + 9 * 3600, "1.0.1", "deployed", {"conversion": -0.10}
            ),
            simulate.PlannedRelease("checkout", day + 9 * 3600 + 1800, "1.0.2"),
            simulate.PlannedRelease("checkout", day + 11 * 3600, "1.0.3"),
        ),
        coarse_seconds=900,
    )
    events = list(simulate.generate(sc))
    catalog = load_catalog()
    engine_only = replay_events(events, catalog).verdicts
    cli = replay(events, Pipeline(catalog), ReplayOutcome()).verdicts
    assert any(r.phase == "final" for r in cli)
    assert {r.judgement.verdict for r in cli} >= {"confounded"}
    assert cli == engine_only
