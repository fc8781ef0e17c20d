"""CLI entry: `python -m stream_app ...`, also the `valueloop` console script."""

from __future__ import annotations

import sys
import time
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from stream_app.errors import ValueloopError
from stream_app.settings import Settings

app = typer.Typer(
    help="valueloop: streaming release impact and value-stream metrics from Kafka events.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
broker_app = typer.Typer(
    help="Run a local single-node Apache Kafka broker (KRaft, no Docker).", no_args_is_help=True
)
topics_app = typer.Typer(help="Manage valueloop's Kafka topics.", no_args_is_help=True)
emit_app = typer.Typer(
    help="Send one event to Kafka and wait for delivery (usable as a CI/CD pipeline step).",
    no_args_is_help=True,
)
schemas_app = typer.Typer(help="JSON Schemas of the event contracts.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
app.add_typer(emit_app, name="emit")
app.add_typer(schemas_app, name="schemas")


class _State:
    overrides: dict[str, Any] = {}  # noqa: RUF012 - one process-wide CLI state


def settings() -> Settings:
    """Settings from VALUELOOP_* variables, with command-line options taking precedence."""
    try:
        return Settings(**{k: v for k, v in _State.overrides.items() if v is not None})
    except Exception as exc:  # pydantic's ValidationError: say it plainly and stop
        raise typer.BadParameter(str(exc)) from exc


def fail(message: str, code: int = 1) -> None:
    """Print an error to stderr and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.callback()
def main_options(
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            "--bootstrap-servers",
            envvar="VALUELOOP_KAFKA_BOOTSTRAP_SERVERS",
            help="Kafka bootstrap servers (host:port,...). Unset: the local broker started by "
            "`valueloop broker start`.",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="VALUELOOP_DATA_DIR",
            help="Local state: broker data, pid files, worker data. [default: .valueloop]",
        ),
    ] = None,
    kpis_file: Annotated[
        Path | None,
        typer.Option(
            "--kpis",
            envvar="VALUELOOP_KPIS_FILE",
            help="KPI catalog (TOML). Unset: the bundled example catalog.",
        ),
    ] = None,
) -> None:
    """Every option can also be set with the VALUELOOP_* variable shown in its help."""
    _State.overrides.update(
        kafka_bootstrap_servers=bootstrap_servers, data_dir=data_dir, kpis_file=kpis_file
    )


def kafka_settings() -> Settings:
    """Settings with bootstrap servers resolved: configured cluster, else the local broker."""
    s = settings()
    if s.kafka_bootstrap_servers:
        return s
    from stream_app.broker import broker_status

    info = broker_status(s.data_dir)
    if info is None:
        fail(
            "no Kafka cluster configured and no local broker running: run `valueloop broker start` "
            "or set VALUELOOP_KAFKA_BOOTSTRAP_SERVERS"
        )
        raise AssertionError  # unreachable: fail() exits
    return s.model_copy(update={"kafka_bootstrap_servers": info.bootstrap})


# ---------------------------------------------------------------------------- broker
@broker_app.command("start")
def broker_start(
    port: Annotated[
        int,
        typer.Option(
            envvar="VALUELOOP_BROKER_PORT", help="Broker port on 127.0.0.1; 0 picks a free one."
        ),
    ] = 0,
    heap: Annotated[
        str, typer.Option(envvar="VALUELOOP_BROKER_HEAP", help="Broker maximum heap (-Xmx).")
    ] = "512m",
) -> None:
    """Resolve the Kafka jars (once), format storage and start the broker; prints its address."""
    from stream_app.broker import ensure_broker

    s = settings()
    if s.kafka_bootstrap_servers:
        typer.echo(
            f"VALUELOOP_KAFKA_BOOTSTRAP_SERVERS is set ({s.kafka_bootstrap_servers}): "
            "nothing started"
        )
        return
    s = s.model_copy(update={"broker_port": port, "broker_heap": heap})
    typer.echo(ensure_broker(s))


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the local broker by its recorded pid."""
    from stream_app.broker import stop_broker

    typer.echo("stopped" if stop_broker(settings().data_dir) else "not running")


@broker_app.command("status")
def broker_status_cmd() -> None:
    """Print the local broker's pid and address; exit 1 when it is not running."""
    from stream_app.broker import broker_status

    info = broker_status(settings().data_dir)
    if info is None:
        typer.echo("not running")
        raise typer.Exit(1)
    typer.echo(f"running pid={info.pid} bootstrap={info.bootstrap} log={info.log_path}")


# ---------------------------------------------------------------------------- topics
@topics_app.command("ensure")
def topics_ensure(
    partitions: Annotated[
        int | None,
        typer.Option(
            envvar="VALUELOOP_TOPIC_PARTITIONS", help="Partitions per topic. [default: 4]"
        ),
    ] = None,
    replication: Annotated[
        int | None,
        typer.Option(envvar="VALUELOOP_TOPIC_REPLICATION", help="Replication factor. [default: 1]"),
    ] = None,
) -> None:
    """Create valueloop's topics if they are missing (idempotent). Topics are keyed by service."""
    from stream_app.producer import ensure_topics

    _State.overrides.update(topic_partitions=partitions, topic_replication=replication)
    for r in ensure_topics(kafka_settings()):
        typer.echo(
            f"{r.name:24} {r.role:12} partitions={r.partitions} "
            f"{'created' if r.created else 'exists'}"
        )


# ---------------------------------------------------------------------------- worker
@app.command()
def worker(
    metrics_host: Annotated[
        str | None,
        typer.Option(
            envvar="VALUELOOP_METRICS_HOST",
            help="Address of /metrics and /health. [default: 127.0.0.1]",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="VALUELOOP_METRICS_PORT", help="Port of /metrics and /health. [default: 9108]"
        ),
    ] = None,
    app_id: Annotated[
        str | None,
        typer.Option(
            envvar="VALUELOOP_APP_ID", help="Consumer group / faust app id. [default: valueloop]"
        ),
    ] = None,
    max_services: Annotated[
        int | None,
        typer.Option(
            envvar="VALUELOOP_MAX_SERVICES",
            help="Distinct services kept; events of more are dead-lettered "
            "(too-many-services). [default: 1000]",
        ),
    ] = None,
    max_kpis_per_service: Annotated[
        int | None,
        typer.Option(
            envvar="VALUELOOP_MAX_KPIS_PER_SERVICE",
            help="Distinct KPI sample streams per service; more are dead-lettered "
            "(too-many-kpis). [default: 64]",
        ),
    ] = None,
    max_label_values: Annotated[
        int | None,
        typer.Option(
            envvar="VALUELOOP_MAX_LABEL_VALUES",
            help="Values of one scope label per KPI stream of a service; more are dead-lettered "
            "(too-many-label-values). [default: the catalog's [scope] max_values]",
        ),
    ] = None,
    known_services: Annotated[
        str | None,
        typer.Option(
            envvar="VALUELOOP_KNOWN_SERVICES",
            help="Comma-separated service names; events of others are dead-lettered "
            "(unknown-service). [default: any service]",
        ),
    ] = None,
) -> None:
    """Run the stream worker: consume the input topics, judge releases, serve /metrics."""
    _State.overrides.update(
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        app_id=app_id,
        max_services=max_services,
        max_kpis_per_service=max_kpis_per_service,
        max_label_values=max_label_values,
        known_services=known_services,
    )
    from stream_app.worker import run_worker

    run_worker(kafka_settings())


@app.command()
def sink(
    host: Annotated[
        str | None,
        typer.Option(
            envvar="VALUELOOP_SINK_HOST",
            help="Address to bind; beyond loopback VALUELOOP_SINK_TOKEN is required. "
            "[default: 127.0.0.1]",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(envvar="VALUELOOP_SINK_PORT", help="Port to listen on. [default: 9109]"),
    ] = None,
) -> None:
    """HTTP CloudEvents sink: POST /events (binary, structured, batch) -> the input topics.

    Events are validated like the worker's Kafka input and answered 202 once Kafka has them.
    The bearer token is read from VALUELOOP_SINK_TOKEN only (never a command-line argument).
    """
    _State.overrides.update(sink_host=host, sink_port=port)
    from stream_app.sink import run_sink

    try:
        run_sink(kafka_settings())
    except ValueError as exc:
        fail(str(exc))


# ---------------------------------------------------------------------------- emit
class Form(StrEnum):
    """How a CDEvent is put on the wire."""

    plain = "plain"
    structured = "structured"
    binary = "binary"


class DeployKind(StrEnum):
    """The CDEvents service event type."""

    deployed = "deployed"
    upgraded = "upgraded"
    rolledback = "rolledback"


def _send(event: Any, form: Form = Form.plain) -> None:
    from stream_app import codec
    from stream_app.producer import Sender

    s = kafka_settings()
    topic = s.topic_names()[codec.role_of(event)]
    headers: list[tuple[str, str | bytes | None]] | None = None
    if form is Form.structured:
        value = codec.encode_structured(event)
    elif form is Form.binary:
        value, ce_headers = codec.encode_binary(event)
        headers = list(ce_headers)
    else:
        value = codec.encode(event)
    sender = Sender(s, **{"message.timeout.ms": 15000})
    sender.send(topic, value, codec.key_of(event), headers)
    sender.flush(20.0)
    typer.echo(f"delivered {codec.role_of(event)} event {getattr(event, 'id', '')} to {topic}")


def _time(value: float | None) -> float:
    return time.time() if value is None else value


def _labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"expected KEY=VALUE, got {p!r}")
        out[k] = v
    return out


EventTime = Annotated[
    float | None, typer.Option("--time", help="Event time, POSIX seconds. [default: now]")
]
EventId = Annotated[str | None, typer.Option("--id", help="Event id. [default: a new UUID]")]
Expect = Annotated[
    list[str] | None,
    typer.Option(
        "--expect",
        help="A bet: KPI:CHANGE, e.g. conversion:+3% or latency_p95:-10% (repeat); sent as "
        "customData.valueloop.expect.",
    ),
]


def _expect(specs: list[str] | None) -> tuple[Any, ...]:
    """``--expect conversion:+3%`` -> bets; a bad one stops the command before anything is sent."""
    from stream_app.events.model import parse_expectation

    out = []
    for spec in specs or ():
        kpi, sep, change = spec.rpartition(":")
        if not sep:
            fail(f"--expect {spec!r}: expected KPI:CHANGE, e.g. conversion:+3%")
        try:
            out.append(parse_expectation(kpi, change))
        except ValueError as e:
            fail(f"--expect {spec!r}: {e}")
    return tuple(out)


@emit_app.command("deployment")
def emit_deployment(
    service: Annotated[str, typer.Option(help="Service that was deployed.")],
    version: Annotated[str, typer.Option(help="Version deployed.")],
    environment: Annotated[str, typer.Option(help="Environment.")] = "production",
    commit: Annotated[
        list[str] | None, typer.Option(help="Commit sha in this release (repeat).")
    ] = None,
    change_id: Annotated[
        list[str] | None, typer.Option(help="Change / pull request id in this release (repeat).")
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(help="Partial release scope KEY=VALUE, e.g. region=eu (repeat)."),
    ] = None,
    kind: Annotated[DeployKind, typer.Option(help="CDEvents service event.")] = DeployKind.deployed,
    form: Annotated[Form, typer.Option(help="CloudEvents form on the wire.")] = Form.plain,
    expect: Expect = None,
    at: EventTime = None,
    event_id: EventId = None,
) -> None:
    """Send a CDEvents service.deployed (or upgraded / rolledback) event."""
    from stream_app.events.model import Release

    _send(
        Release(
            id=event_id or str(uuid.uuid4()),
            service=service,
            version=version,
            time=_time(at),
            kind=kind.value,
            environment=environment,
            commits=tuple(commit or ()),
            change_ids=tuple(change_id or ()),
            scope=_labels(scope or []),
            expect=_expect(expect),
        ),
        form,
    )


@emit_app.command("flag")
def emit_flag(
    service: Annotated[str, typer.Option(help="Service the flag belongs to.")],
    flag: Annotated[str, typer.Option(help="Feature-flag key.")],
    variation: Annotated[str, typer.Option(help="Variation now served.")] = "on",
    rollout: Annotated[float, typer.Option(help="Rollout percentage, 0-100.")] = 100.0,
    expect: Expect = None,
    at: EventTime = None,
    event_id: EventId = None,
) -> None:
    """Send a feature-flag change (a release of its own kind)."""
    from stream_app.events.model import Release

    _send(
        Release(
            id=event_id or str(uuid.uuid4()),
            service=service,
            version=f"{flag}={variation}@{rollout:g}%",
            time=_time(at),
            kind="flag",
            flag_key=flag,
            rollout_percent=rollout,
            expect=_expect(expect),
        )
    )


class IncidentAction(StrEnum):
    """The CDEvents incident event type."""

    detected = "detected"
    reported = "reported"
    resolved = "resolved"


@emit_app.command("incident")
def emit_incident(
    service: Annotated[str, typer.Option(help="Affected service.")],
    incident_id: Annotated[
        str, typer.Option("--incident", help="Incident id (same for all its events).")
    ],
    action: Annotated[
        IncidentAction, typer.Option(help="What happened.")
    ] = IncidentAction.detected,
    deployment_id: Annotated[
        str | None, typer.Option(help="Id of the deployment event that caused it, when known.")
    ] = None,
    environment: Annotated[str, typer.Option(help="Environment.")] = "production",
    description: Annotated[str | None, typer.Option(help="Short description.")] = None,
    at: EventTime = None,
    event_id: EventId = None,
) -> None:
    """Send a CDEvents incident.detected / reported / resolved event."""
    from stream_app.events.model import Incident

    _send(
        Incident(
            id=event_id or str(uuid.uuid4()),
            incident_id=incident_id,
            time=_time(at),
            service=service,
            action=action.value,
            environment=environment,
            deployment_id=deployment_id,
            description=description,
        )
    )


@emit_app.command("sample")
def emit_sample(
    service: Annotated[str, typer.Option(help="Service the KPI belongs to.")],
    kpi: Annotated[str, typer.Option(help="Sample stream name, e.g. orders.")],
    value: Annotated[float, typer.Option(help="Sample value.")],
    count: Annotated[float, typer.Option(help="Observations the value sums.")] = 1.0,
    label: Annotated[list[str] | None, typer.Option(help="Label KEY=VALUE (repeat).")] = None,
    at: EventTime = None,
    event_id: EventId = None,
    product: Annotated[
        str | None, typer.Option(help="Product (value stream) of a product-level sample.")
    ] = None,
) -> None:
    """Send one KPI telemetry sample."""
    from stream_app.events.model import KpiSample

    _send(
        KpiSample(
            service=service,
            kpi=kpi,
            time=_time(at),
            value=value,
            count=count,
            labels=_labels(label or []),
            id=event_id,
            product=product,
        )
    )


# ---------------------------------------------------------------------------- schemas
@schemas_app.command("export")
def schemas_export(
    out: Annotated[Path, typer.Option(help="Directory to write the schemas to.")] = Path("schemas"),
) -> None:
    """Write one JSON Schema per event contract, generated from the models."""
    from stream_app.schemas import export_schemas

    for p in export_schemas(out):
        typer.echo(str(p))


@schemas_app.command("check")
def schemas_check(
    directory: Annotated[
        Path, typer.Option("--dir", help="Directory of checked-in schemas.")
    ] = Path("schemas"),
) -> None:
    """Exit 1 when the checked-in schemas differ from the models."""
    from stream_app.schemas import check_schemas

    drift = check_schemas(directory)
    for d in drift:
        typer.echo(d)
    if drift:
        raise typer.Exit(1)
    typer.echo("schemas are up to date")


# ---------------------------------------------------------------------------- simulate
class ScenarioName(StrEnum):
    """Simulator presets."""

    demo = "demo"
    accuracy = "accuracy"
    weekly = "weekly"


@app.command()
def simulate(
    scenario: Annotated[ScenarioName, typer.Option(help="Preset scenario.")] = ScenarioName.demo,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same events).")] = 7,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the events as JSON lines (one produced message value per line; .gz ok)."
        ),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(help="Write the ground truth (one JSON object per release and KPI)."),
    ] = None,
    to_kafka: Annotated[
        bool,
        typer.Option(
            "--to-kafka", help="Produce the events to the input topics, keyed by service."
        ),
    ] = False,
    compression: Annotated[
        float,
        typer.Option(
            help="Event-time seconds per wall-clock second when producing (0: flat out).",
        ),
    ] = 0.0,
    samples_per_minute: Annotated[
        int,
        typer.Option(help="Telemetry volume: samples per stream, service and region per minute."),
    ] = 1,
) -> None:
    """Generate a simulated shop (releases with known effects, KPIs, work items, incidents)."""
    from stream_app.simfeed import run_simulation

    if out is None and not to_kafka and truth is None:
        fail("say where the events go: --out FILE and/or --to-kafka (and/or --truth FILE)")
    run_simulation(
        scenario.value,
        seed,
        out=out,
        truth=truth,
        settings=kafka_settings() if to_kafka else None,
        compression=compression,
        samples_per_minute=samples_per_minute,
    )


# ---------------------------------------------------------------------------- replay
@app.command("replay")
def replay_cmd(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="JSON-lines files of produced message values (mixed kinds, any order; .gz ok).",
            exists=True,
            dir_okay=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Write the verdicts as JSON lines (the vsm.impact contract)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or tables.")] = False,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Write the value stream map, releases and DORA pages as one self-contained "
            "HTML file (opens from disk, no network)."
        ),
    ] = None,
    summary_out: Annotated[
        Path | None,
        typer.Option(
            "--summary-out",
            help="Write input counts (rejections by reason, with examples), final verdicts, "
            "DORA, flow and value-ledger figures as JSON.",
        ),
    ] = None,
    ledger_out: Annotated[
        Path | None,
        typer.Option(
            "--ledger-out",
            help="Write the value ledger as JSON lines: the same records, in the same order, "
            "as the worker publishes to the ledger topic (vsm.ledger); a later line for the "
            "same release and item supersedes an earlier one.",
        ),
    ] = None,
    cost_per_hour: Annotated[
        float | None,
        typer.Option(
            "--cost-per-hour",
            help="Money per active engineering hour, for the ledger's cost; also "
            "VALUELOOP_COST_PER_HOUR. [default: hours only]",
        ),
    ] = None,
    max_rejected: Annotated[
        float,
        typer.Option(
            "--max-rejected",
            min=0.0,
            max=100.0,
            help="Exit 1 when more than this percentage of the lines is rejected (not "
            "decodable, or refused as the worker would dead-letter it).",
        ),
    ] = 0.0,
    kpis_file: Annotated[
        Path | None,
        typer.Option(
            "--kpis",
            help="KPI catalog (TOML); as the top-level --kpis or VALUELOOP_KPIS_FILE.",
        ),
    ] = None,
    valuestream_file: Annotated[
        Path | None,
        typer.Option(
            "--valuestream",
            help="Value-stream definition (TOML); also VALUELOOP_VALUESTREAM_FILE. "
            "[default: the bundled one]",
        ),
    ] = None,
    features_file: Annotated[
        Path | None,
        typer.Option(
            "--features",
            help="Features file (TOML) for the value ledger; also VALUELOOP_FEATURES_FILE.",
        ),
    ] = None,
    report_period_days: Annotated[
        float | None,
        typer.Option(
            help="Period of the flow and DORA figures, days of event time; also "
            "VALUELOOP_REPORT_PERIOD_DAYS. [default: 7]",
        ),
    ] = None,
    max_services: Annotated[
        int | None,
        typer.Option(help="As the worker's (VALUELOOP_MAX_SERVICES). [default: 1000]"),
    ] = None,
    max_kpis_per_service: Annotated[
        int | None,
        typer.Option(help="As the worker's (VALUELOOP_MAX_KPIS_PER_SERVICE). [default: 64]"),
    ] = None,
    max_label_values: Annotated[
        int | None,
        typer.Option(help="As the worker's (VALUELOOP_MAX_LABEL_VALUES). [default: catalog]"),
    ] = None,
    known_services: Annotated[
        str | None,
        typer.Option(help="As the worker's (VALUELOOP_KNOWN_SERVICES). [default: any service]"),
    ] = None,
) -> None:
    """Run the worker's core offline over files of events: verdicts, flow and DORA summary.

    Exits 1 when more lines are rejected than --max-rejected allows (default: none), after
    printing a few rejected lines per reason and writing the outputs.
    """
    from stream_app.replay import rejection_error
    from stream_app.replay_cli import run_replay

    overrides = {
        "kpis_file": kpis_file,
        "valuestream_file": valuestream_file,
        "features_file": features_file,
        "report_period_days": report_period_days,
        "max_services": max_services,
        "max_kpis_per_service": max_kpis_per_service,
        "max_label_values": max_label_values,
        "known_services": known_services,
        "cost_per_hour": cost_per_hour,
    }
    # Set (or reset) every replay option; --kpis only when given, not to undo the top-level one.
    _State.overrides.update(
        {k: v for k, v in overrides.items() if k != "kpis_file" or v is not None}
    )
    result = run_replay(
        settings(),
        files,
        out=out,
        quiet=quiet,
        report=report,
        summary_out=summary_out,
        ledger_out=ledger_out,
    )
    error = rejection_error(result, max_rejected)
    if error is not None:
        fail(error)


# ---------------------------------------------------------------------------- demo
@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 7,
    keep_running: Annotated[
        bool,
        typer.Option("--keep-running", help="After the summary, keep the stack up until Ctrl-C."),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the verdicts.")] = 900.0,
    products: Annotated[
        bool,
        typer.Option(
            "--products",
            help="Judge every release on the shop's orders, revenue, conversion and cart value "
            "(product-level KPIs of one shop) and on its own latency and errors.",
        ),
    ] = False,
) -> None:
    """The whole stack on this machine: broker, worker, Prometheus, a simulated shop, a summary."""
    from stream_app.demo import run_demo

    raise typer.Exit(
        run_demo(
            settings(), seed=seed, keep_running=keep_running, timeout=timeout, products=products
        )
    )


def main() -> None:
    """Console-script entry point: valueloop errors become one clear line and exit code 1."""
    try:
        app()
    except ValueloopError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
