"""The worker process: wires settings, metrics, the core pipeline and the faust agents."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import faust
from aiohttp import web
from faust.web import Request, Response, View

from stream_app.agents.debug import broker_reachable, register_debug_pages
from stream_app.agents.intake import Checkpoint, register_intake, rewind_uncommitted
from stream_app.agents.otlp import register_otlp
from stream_app.agents.progress import InputProgress
from stream_app.agents.state import ServiceStateTable
from stream_app.app import App, build_app
from stream_app.codec import Decoded, KpiSample, Release
from stream_app.core.catalog import load_catalog, product_name
from stream_app.core.ledger import load_features
from stream_app.core.valuestream import load_valuestream
from stream_app.metrics import CONTENT_TYPE_LATEST, Metrics, add_process_collectors
from stream_app.pipeline import Pipeline, Step
from stream_app.settings import Settings
from stream_app.web import register_web

log = logging.getLogger("valueloop.worker")

PROGRESS_INTERVAL = 1.0  # seconds between two observations of the input offsets
STOP_CHECKPOINT_SECONDS = 4.0  # the last checkpoint on SIGTERM; the whole stop stays under 10 s
STOP_DEADLINE_SECONDS = 9.0  # after SIGTERM the process exits by then, whatever hangs


def build_worker_app(
    settings: Settings, metrics: Metrics | None = None
) -> tuple[App, Metrics, Pipeline]:
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
        cost_per_hour=settings.cost_per_hour,
        currency=settings.currency,
        rework_window_seconds=settings.rework_window_hours * 3600.0,
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
        if topic == forwarded:  # a release on its product's partition (checked where it came in)
            return handle_forwarded(event, topic, partition, offset)
        key = pipeline.key_of(event)  # the state it goes to: its service's, or its product's
        if topic in checkpointed and state.replayed(key, topic, partition, offset):
            return None  # already in the restored state: not a duplicate, not counted again
        refused = pipeline.admit(event)  # before any state is loaded, created or touched
        if refused is not None:
            return refused
        if topic in checkpointed:
            if not state.admit(key, topic, partition, offset):
                return None
        else:
            state.before(key, partition)
        return pipeline.handle(event)

    def handle_forwarded(event: Decoded, topic: str, partition: int, offset: int) -> Step | None:
        if not isinstance(event, Release):
            return Step([], "wrong-topic", event.service)
        subjects = pipeline.engine.subjects_of(event)[1:]
        if not subjects:
            return Step([], "out-of-scope", event.service)
        if not state.admit(subjects[0], topic, partition, offset):
            return None  # already in the product's restored state
        return pipeline.handle_product_release(event)

    # Every input's whole effect lives in the service snapshots (engine, flow, DORA and ledger
    # state), checkpointed with the offsets they cover: exactly-once by offset.
    checkpointed = {
        settings.topic_deployments,
        settings.topic_telemetry,
        settings.topic_workflow,
        settings.topic_incidents,
    }
    # Product-level KPIs: a release is judged on its service's KPIs where it comes in (keyed by
    # service) and forwarded, keyed by product, to the partition of its product's state.
    products = pipeline.catalog.has_product_kpis()
    pipeline.forward_product_releases = products
    forwarded = settings.topic_product_releases if products else None
    if forwarded is not None:
        checkpointed.add(forwarded)

    def wrong_key(event: Decoded, key: bytes | None) -> str | None:
        # A product's state lives on the partition of its product's key: a product-level sample
        # keyed otherwise would start a second state of the product on another partition.
        if type(event) is not KpiSample:
            return None
        product = product_name(pipeline.key_of(event))
        if product is None or key == product.encode():
            return None
        return f"a sample of product {product!r} (product-level stream) must be keyed by it"

    checkpoint = Checkpoint()
    register_intake(
        app,
        settings,
        metrics,
        handle,
        checkpoint,
        forward_releases=products,
        wrong_key=wrong_key if products else None,
    )
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

    # Lag and stalls on a timer of their own: a stuck batch step holds the checkpoint lock.
    progress = InputProgress(app, metrics, roles_by_topic, settings.stall_seconds)

    @app.timer(PROGRESS_INTERVAL)
    async def watch_progress() -> None:
        await progress.observe()

    @app.page("/metrics")  # type: ignore[arg-type]  # an aiohttp Response is what faust serves
    async def metrics_page(self: View, request: Request) -> web.Response:
        # aiohttp refuses a charset inside content_type, so the exposition header is set whole.
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/health")
    async def health_page(self: View, request: Request) -> Response:
        assigned = metrics.ready._value.get() >= 1.0
        broker = broker_reachable(app)
        stuck = progress.stalled()
        ready = assigned and broker and not stuck
        body: dict[str, Any] = {
            "ready": ready,
            "partitions_assigned": assigned,
            "broker_reachable": broker,
            "stalled": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "lag": p.lag,
                    "seconds_since_progress": round(p.since_progress, 1),
                }
                for p in stuck
            ],
        }
        if not ready:
            body["reason"] = health_reason(assigned, broker, len(stuck), settings.stall_seconds)
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

    async def drain_on_stop() -> None:
        # The last checkpoint, bounded: a stuck batch step holds the lock for good.
        try:
            await asyncio.wait_for(checkpoint.run(app, state.flush), STOP_CHECKPOINT_SECONDS)
        except TimeoutError:
            log.warning(
                "stopping: the last checkpoint did not finish in %g s (is an intake stuck?);"
                " input not acked yet is read again by the next owner",
                STOP_CHECKPOINT_SECONDS,
            )
        # Nothing delivered and not acked now will be: faust need not wait for it (it commits
        # only acked offsets, so none of it counts as processed).
        unacked = getattr(app.consumer, "_unacked_messages", None)
        if unacked:
            log.info("stopping: %d delivered messages left unacked", len(unacked))
            unacked.clear()

    app.before_stop_drain = drain_on_stop
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]  # mode's stub wants signal=
    app.on_rebalance_complete.connect(on_recovered)  # type: ignore[arg-type]  # same as above
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]  # same as above
    register_debug_pages(app, pipeline, owned=lambda: list(state.partition_of))
    return app, metrics, pipeline


def health_reason(assigned: bool, broker: bool, stalled: int, stall_seconds: float) -> str:
    """Why /health answers 503, in one line."""
    if not broker:
        return "the Kafka broker is unreachable"
    if not assigned:
        return "no input partitions assigned yet"
    return (
        f"{stalled} input partition(s) made no progress for {stall_seconds:g} s while they had"
        " lag (see valueloop_intake_stalled)"
    )


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run the worker in the foreground until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    from stream_app.preflight import check_kafka  # fail fast: unreachable Kafka, refused login

    check_kafka(settings)
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    app, _, _ = build_worker_app(settings)
    worker = BoundedStopWorker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()


class BoundedStopWorker(faust.Worker):
    """faust's Worker, whose stop (SIGTERM, SIGINT) ends the process within STOP_DEADLINE_SECONDS.

    The stop itself is bounded (see `App.before_stop_drain`); this is the backstop for a part of
    faust's stop that still hangs: the process exits (code 1, said in the log) at the deadline.
    Exiting there is safe: offsets are committed only after the state and outputs they cover.
    """

    async def stop(self) -> None:
        deadline = threading.Timer(STOP_DEADLINE_SECONDS, _exit_at_deadline)
        deadline.daemon = True
        deadline.start()
        await super().stop()


def _exit_at_deadline() -> None:
    log.error("stopping took more than %g s: exiting now", STOP_DEADLINE_SECONDS)
    logging.shutdown()
    os._exit(1)
