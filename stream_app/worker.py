"""The worker process: wires settings, metrics, the core pipeline and the faust agents."""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from aiohttp import web
from faust.web import Request, Response, View

from stream_app.agents.debug import broker_reachable, register_debug_pages
from stream_app.agents.intake import Checkpoint, register_intake, rewind_uncommitted
from stream_app.agents.otlp import register_otlp
from stream_app.agents.state import ServiceStateTable
from stream_app.app import build_app
from stream_app.codec import Decoded
from stream_app.core.catalog import load_catalog
from stream_app.core.ledger import load_features
from stream_app.core.valuestream import load_valuestream
from stream_app.metrics import CONTENT_TYPE_LATEST, Metrics, add_process_collectors
from stream_app.pipeline import Pipeline, Step
from stream_app.settings import Settings
from stream_app.web import register_web

log = logging.getLogger("valueloop.worker")


def build_worker_app(
    settings: Settings, metrics: Metrics | None = None
) -> tuple[faust.App, Metrics, Pipeline]:
    """The faust App with valueloop's agents, state table and /metrics, /health, /live pages."""
    app = build_app(settings)
    metrics = metrics or Metrics(max_services=settings.max_services)
    add_process_collectors(metrics.registry)  # process_* (memory, CPU, fds) and python_info
    catalog = load_catalog(settings.kpis_file)
    pipeline = Pipeline(
        catalog,
        load_valuestream(settings.valuestream_file),
        report_period_seconds=settings.report_period_days * 86400.0,
        features=load_features(settings.features_file),
        limits=settings.guard_limits(),
        clock=time.time,
    )
    state = ServiceStateTable(
        app,
        settings,
        pipeline,
        on_restore=lambda _service: metrics.state_restored.inc(),
        on_snapshot=lambda _service: metrics.state_snapshots.inc(),
    )

    # A service with stored state was admitted before a restart: admit it again at any count.
    pipeline.guard.stored = lambda service: state.table.data.get(service.encode()) is not None

    def handle(event: Decoded, topic: str, partition: int, offset: int) -> Step | None:
        if topic in checkpointed and state.replayed(event.service, topic, partition, offset):
            return None  # already in the restored state: not a duplicate, not counted again
        refused = pipeline.admit(event)  # before any state is loaded, created or touched
        if refused is not None:
            return refused
        if topic in checkpointed:
            if not state.admit(event.service, topic, partition, offset):
                return None
        else:
            state.before(event.service, partition)
        return pipeline.handle(event)

    # Inputs whose whole effect lives in the engine snapshots (exactly-once by offset); workflow
    # and incident events feed the flow/DORA trackers, which rebuild from the committed offsets.
    checkpointed = {settings.topic_deployments, settings.topic_telemetry}
    checkpoint = Checkpoint()
    register_intake(app, settings, metrics, handle, checkpoint)
    assert checkpoint.deadletters is not None  # register_intake made them
    register_otlp(app, settings, metrics, catalog, checkpoint.deadletters)
    inputs = ("deployments", "telemetry", "workflow", "incidents")
    roles_by_topic = {settings.topic_names()[r]: r for r in inputs}

    @app.timer(state.interval)
    async def flush_state() -> None:
        await checkpoint.run(app, state.flush)
        metrics.state_flushed.set(time.time())
        for service in state.partition_of:
            wm = pipeline.engine.watermark(service)
            if wm > float("-inf") and metrics.admits(service):
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
        assigned = metrics.ready._value.get() >= 1.0
        broker = broker_reachable(app)
        ready = assigned and broker
        body = {"ready": ready, "partitions_assigned": assigned, "broker_reachable": broker}
        return self.json(body, status=200 if ready else 503)

    @app.page("/live")
    async def live_page(self: View, request: Request) -> Response:
        return self.json({"live": True})

    register_web(app, pipeline, settings)  # /ui: value stream map, releases, DORA

    def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        metrics.ready.set(1.0)

    async def on_recovered(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Tables are recovered and input not yet resumed: load every service of our partitions,
        # and make sure every input partition is read again from its committed offset.
        mine = {tp.partition for tp in app.consumer.assignment() if tp.topic in checkpointed}
        state.restore_partitions(mine)
        try:
            await rewind_uncommitted(app, set(roles_by_topic))
        except Exception as exc:  # the broker went away mid-rebalance: faust rejoins and retries
            log.warning("could not rewind the uncommitted input partitions: %r", exc)

    async def on_revoked(sender: Any, revoked: Any = (), *args: Any, **kwargs: Any) -> None:
        await checkpoint.run(app, state.flush)
        await app.producer.flush()  # the new owner recovers from the changelog
        state.forget(tp for tp in revoked if tp.topic in checkpointed)

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]  # mode's stub wants signal=
    app.on_rebalance_complete.connect(on_recovered)  # type: ignore[arg-type]  # same as above
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]  # same as above
    register_debug_pages(app, pipeline, owned=lambda: list(state.partition_of))
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
    from stream_app.preflight import check_kafka  # fail fast: unreachable Kafka, refused login

    check_kafka(settings)
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    app, _, _ = build_worker_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
