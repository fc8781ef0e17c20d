"""The worker process: wires settings, metrics, the core pipeline and the faust agents."""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from aiohttp import web
from faust.web import Request, Response, View

from stream_app.agents.intake import register_intake
from stream_app.agents.state import ServiceStateTable
from stream_app.app import build_app
from stream_app.codec import Decoded
from stream_app.core.catalog import load_catalog
from stream_app.core.ledger import load_features
from stream_app.core.valuestream import load_valuestream
from stream_app.metrics import CONTENT_TYPE_LATEST, Metrics
from stream_app.pipeline import Pipeline, Step
from stream_app.settings import Settings

log = logging.getLogger("valueloop.worker")


def build_worker_app(
    settings: Settings, metrics: Metrics | None = None
) -> tuple[faust.App, Metrics, Pipeline]:
    """The faust App with valueloop's agents, state table and /metrics, /health, /live pages."""
    app = build_app(settings)
    metrics = metrics or Metrics()
    pipeline = Pipeline(
        load_catalog(settings.kpis_file),
        load_valuestream(settings.valuestream_file),
        report_period_seconds=settings.report_period_days * 86400.0,
        features=load_features(settings.features_file),
    )
    state = ServiceStateTable(
        app,
        settings,
        pipeline,
        on_restore=lambda _service: metrics.state_restored.inc(),
        on_snapshot=lambda _service: metrics.state_snapshots.inc(),
    )

    def handle(event: Decoded, partition: int) -> Step:
        state.before(event.service, partition)
        step = pipeline.handle(event)
        state.maybe_flush()
        return step

    register_intake(app, settings, metrics, handle)
    inputs = ("deployments", "telemetry", "workflow", "incidents")
    roles_by_topic = {settings.topic_names()[r]: r for r in inputs}

    @app.timer(state.interval)
    async def flush_state() -> None:
        state.maybe_flush(force=True)
        metrics.state_flushed.set(time.time())
        for service in state.partition_of:
            wm = pipeline.engine.watermark(service)
            if wm > float("-inf"):
                metrics.watermark.labels(service).set(wm)
        metrics.observe_samples(pipeline.drain_observations())
        metrics.apply_samples(pipeline.report_samples())
        for role, lag in consumer_lag(app, roles_by_topic).items():
            metrics.consumer_lag.labels(role).set(lag)

    @app.page("/metrics")  # type: ignore[arg-type]  # an aiohttp Response is what faust serves
    async def metrics_page(self: View, request: Request) -> web.Response:
        # aiohttp refuses a charset inside content_type, so the exposition header is set whole.
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/health")
    async def health_page(self: View, request: Request) -> Response:
        ready = metrics.ready._value.get() >= 1.0
        return self.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/live")
    async def live_page(self: View, request: Request) -> Response:
        return self.json({"live": True})

    def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        metrics.ready.set(1.0)

    def on_revoked(sender: Any, revoked: Any = (), *args: Any, **kwargs: Any) -> None:
        state.maybe_flush(force=True)
        state.forget(revoked)

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]  # mode's stub wants signal=
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]  # same as above
    return app, metrics, pipeline


def consumer_lag(app: faust.App, roles_by_topic: dict[str, str]) -> dict[str, float]:
    """Messages between the worker's read position and the end of its input partitions, by role."""
    consumer: Any = app.consumer
    read = getattr(consumer, "_read_offset", {})
    lag: dict[str, float] = dict.fromkeys(roles_by_topic.values(), 0.0)
    for tp in consumer.assignment():
        role = roles_by_topic.get(tp.topic)
        end = consumer.highwater(tp) if role is not None else None
        if role is None or end is None:
            continue
        last = read.get(tp)
        lag[role] += max(0, end - (last + 1 if last is not None else 0))
    return lag


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run the worker in the foreground until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    app, _, _ = build_worker_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
