"""Read-only debug pages of the worker: engine state as JSON, for harnesses that compare runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.web import Request, Response, View

from stream_app.core.impact import ImpactEngine
from stream_app.pipeline import Pipeline


def state_totals(
    engine: ImpactEngine, owned: Iterable[str] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Bucket totals per service and "stream/scope" (see `ImpactEngine.bucket_totals`).

    Args:
        engine: the worker's impact engine.
        owned: when given, only these services (those whose partitions the worker holds now:
            after a rebalance the engine may still hold state it no longer owns).
    """
    services = None if owned is None else sorted(set(owned) & set(engine.services()))
    return engine.bucket_totals(services)


def state_buckets(
    engine: ImpactEngine, service: str, stream: str, scope: str = ""
) -> list[list[float]]:
    """The retained non-empty buckets of one series as [index, count, sum] (to find a diff)."""
    return [[float(i), c, s] for i, c, s in engine.bucket_rows(service, stream, scope)]


def register_debug_pages(
    app: faust.App, pipeline: Pipeline, owned: Callable[[], Iterable[str]] | None = None
) -> None:
    """Add GET /state/totals: {service: {"stream/scope": {"buckets", "count", "sum"}}}, and
    GET /state/buckets?service=&stream=&scope=: that series' non-empty buckets [index, count, sum],
    and GET /state/broker: {"reachable": `broker_reachable`} (the signal /health should use).

    Args:
        app: the worker's faust app.
        pipeline: the worker's pipeline (its engine is read, never changed).
        owned: returns the services the worker owns now; default: every service with state.
    """

    @app.page("/state/totals")
    async def totals_page(self: View, request: Request) -> Response:
        return self.json(state_totals(pipeline.engine, owned() if owned is not None else None))

    @app.page("/state/broker")
    async def broker_page(self: View, request: Request) -> Response:
        return self.json({"reachable": broker_reachable(app)})

    @app.page("/state/buckets")
    async def buckets_page(self: View, request: Request) -> Response:
        q = request.query
        rows = state_buckets(
            pipeline.engine, q.get("service", ""), q.get("stream", ""), q.get("scope", "")
        )
        return self.json(rows)


def broker_reachable(app: faust.App) -> bool:
    """Whether the worker's consumer holds a live connection to a broker (for /health).

    faust's own state (assignment, the ready flag) does not change when the broker goes away;
    aiokafka's client does: it keeps one connection per broker node and drops it when the broker
    closes it, and reconnect attempts fail until the broker is back. A consumer that is fetching
    always holds its fetch and coordinator connections, so none connected means no broker.

    Args:
        app: the worker's faust app (started; before its consumer exists the answer is False).
    """
    client = _aiokafka_client(app)
    if client is None:
        return False
    return any(_conn_connected(c) for c in list(getattr(client, "_conns", {}).values()))


def _aiokafka_client(app: faust.App) -> Any:
    """The aiokafka client under faust's consumer thread, or None before it started."""
    try:
        consumer: Any = app.consumer
    except Exception:  # faust builds it lazily; before the worker starts there is none
        return None
    thread = getattr(consumer, "_thread", None)
    inner = getattr(thread, "_consumer", None)
    return getattr(inner, "_client", None)


def _conn_connected(conn: Any) -> bool:
    checker = getattr(conn, "connected", None)
    try:
        return bool(checker()) if callable(checker) else False
    except Exception:
        return False
