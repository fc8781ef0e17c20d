"""Links CDEvents producers already send: an incident's artifactId, a deployment's chainId/links.

Events go through the codec as a producer writes them, then the DORA core (no broker, no clock).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream_app import codec
from stream_app.core.dora import DoraTracker
from stream_app.events import format_timestamp
from stream_app.events.model import Incident, Release, WorkflowEvent

H = 3600.0
T0 = 1_780_000_000.0


def _context(spec: str, cid: str, kind: str, hours: float, chain: str | None) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "version": spec,
        "id": cid,
        "source": "/ci",
        "type": f"dev.cdevents.{kind}",
        "timestamp": format_timestamp(T0 + hours * H),
    }
    if chain is not None:
        ctx["chain_id" if spec == "0.4.0" else "chainId"] = chain
    return ctx


def deployed(
    cid: str,
    version: str,
    hours: float,
    spec: str = "0.4.1",
    chain: str | None = None,
    links: list[dict[str, Any]] | None = None,
) -> Release:
    ctx = _context(spec, cid, "service.deployed.0.2.0", hours, chain)
    if links is not None:
        ctx["links"] = links
    doc = {
        "context": ctx,
        "subject": {
            "id": "service/shop",
            "type": "service",
            "content": {
                "environment": {"id": "production"},
                "artifactId": f"pkg:oci/shop@{version}",
            },
        },
    }
    r = codec.decode("deployments", orjson.dumps(doc))
    assert isinstance(r, Release), r
    return r


def merged(
    cid: str, change: str, hours: float, spec: str = "0.4.1", chain: str | None = None
) -> WorkflowEvent:
    doc = {
        "context": _context(spec, cid, "change.merged.0.2.0", hours, chain),
        "subject": {
            "id": change,
            "type": "change",
            "content": {"repository": {"id": "acme/shop"}},
        },
    }
    ev = codec.decode("workflow", orjson.dumps(doc))
    assert isinstance(ev, WorkflowEvent), ev
    return ev


def detected(hours: float, artifact: str) -> Incident:
    doc = {
        "context": _context("0.4.1", "inc-1-detected", "incident.detected.0.2.0", hours, None),
        "subject": {
            "id": "INC-1",
            "type": "incident",
            "content": {
                "environment": {"id": "production"},
                "service": {"id": "shop"},
                "artifactId": artifact,
            },
        },
    }
    i = codec.decode("incidents", orjson.dumps(doc))
    assert isinstance(i, Incident), i
    return i


def test_an_incident_is_linked_to_the_deployment_of_its_artifact_not_the_latest() -> None:
    dora = DoraTracker()
    dora.on_release(deployed("d-100", "v1.0.0", 0))
    dora.on_release(deployed("d-110", "v1.1.0", 2))
    # v1.1.0 is the latest deployment: a link by time would blame it.
    dora.on_incident(detected(3, "pkg:oci/shop@v1.0.0"))
    rep = dora.report(T0 + 4 * H, 86400.0)["shop"]
    (link,) = rep.incidents
    assert (link.deployment_id, link.link) == ("d-100", "artifact")
    assert [f.deployment_id for f in rep.failures] == ["d-100"]


def test_an_artifact_no_deployment_has_falls_back_to_time() -> None:
    dora = DoraTracker()
    dora.on_release(deployed("d-100", "v1.0.0", 0))
    dora.on_release(deployed("d-110", "v1.1.0", 2))
    dora.on_incident(detected(3, "pkg:oci/shop@v9.9.9"))
    (link,) = dora.report(T0 + 4 * H, 86400.0)["shop"].incidents
    assert (link.deployment_id, link.link) == ("d-110", "time")


@pytest.mark.parametrize("spec", ["0.4.0", "0.4.1"])
def test_a_change_and_a_deployment_in_one_chain_give_a_lead_time(spec: str) -> None:
    dora = DoraTracker()
    dora.on_workflow(merged("c-merged", "PR-7", 0, spec, chain="chain-7"))
    dora.on_release(deployed("d-100", "v1.0.0", 5, spec, chain="chain-7"))
    rep = dora.report(T0 + 6 * H, 86400.0)["shop"]
    assert rep.changes == 1
    assert rep.lead_time is not None and rep.lead_time.p50 == pytest.approx(5 * H)
    assert dora.change_lead_times(T0 + 6 * H) == [("shop", "PR-7", "d-100", 5 * H)]


def test_a_deployment_of_another_chain_has_no_lead_time() -> None:
    dora = DoraTracker()
    dora.on_workflow(merged("c-merged", "PR-7", 0, chain="chain-7"))
    dora.on_release(deployed("d-100", "v1.0.0", 5, chain="chain-8"))
    assert dora.report(T0 + 6 * H, 86400.0)["shop"].changes == 0


def test_a_deployment_linking_to_the_change_event_gives_a_lead_time() -> None:
    dora = DoraTracker()
    dora.on_workflow(merged("c-merged", "PR-7", 0))
    link = {"linkType": "PATH", "from": {"contextId": "c-merged"}}
    dora.on_release(deployed("d-100", "v1.0.0", 2, links=[link]))
    assert dora.change_lead_times(T0 + 3 * H) == [("shop", "PR-7", "d-100", 2 * H)]


def test_a_release_keeps_its_chain_and_links_across_a_state_snapshot() -> None:
    from stream_app.core.catalog import load_catalog
    from stream_app.pipeline import Pipeline

    link = {"linkType": "RELATION", "linkKind": "TRIGGER", "target": {"contextId": "c-merged"}}
    r = deployed("d-100", "v1.0.0", 0, chain="chain-7", links=[link])
    assert (r.chain_id, r.links) == ("chain-7", ("c-merged",))
    first = Pipeline(load_catalog())
    first.handle(r)
    second = Pipeline(load_catalog())
    second.restore_service("shop", first.snapshot_service("shop"))
    assert second.engine.pending_releases("shop") == [r]
