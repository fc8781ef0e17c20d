"""`valueloop demo`: broker, worker, Prometheus and the simulated shop, live, then a summary."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from stream_app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a URL; (status, body), status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class Processes:
    """Child processes the demo started, stopped by pid in reverse order."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, args: list[str], log: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as fh:
            p = subprocess.Popen(
                args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.procs.append((name, p))
        return p

    def stop_all(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for _, p in reversed(self.procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def wait_until(
    cond: Any,
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll `cond()` until true; raise RuntimeError with the log tail on timeout or death."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        if cond():
            return
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log else ""
    raise RuntimeError(f"{what}: not ready after {timeout:.0f}s\n{tail}")


class VerdictCollector(threading.Thread):
    """Reads the impact topic in the background (confluent-kafka) and keeps the latest verdicts."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        self.consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"valueloop-demo-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([settings.topic_impact])
        self.latest: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.count = 0
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop_event.is_set():
            msg = self.consumer.poll(0.3)
            if msg is None or msg.error():
                continue
            try:
                v = orjson.loads(msg.value() or b"")
            except orjson.JSONDecodeError:
                continue
            with self.lock:
                self.count += 1
                self.latest[(v["release_id"], v["kpi"], v["phase"])] = v
        self.consumer.close()

    def finals(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self.lock:
            return {(r, k): v for (r, k, ph), v in self.latest.items() if ph == "final"}


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out.append((dict(s.labels), float(s.value)))
    return out


def _cleanup_on_signals() -> Callable[[], None]:
    """SIGTERM (and SIGINT, even when a background shell ignored it) clean up like Ctrl-C.

    Returns a function that puts the previous handlers back. Outside the main thread: no change.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


SHOP = "shop"
# The demo's business streams; with --products they are measured for the shop as a whole.
SHOP_STREAMS = frozenset({"orders", "sessions", "revenue", "cart_value"})
SHOP_KPIS = frozenset({"orders", "revenue", "conversion", "cart_value"})


def shop_catalog_text(base: str, overlap: str = "30m") -> str:
    """The bundled catalog's text with the shop's business KPIs declared at product level.

    The demo's services release about hourly: with the default hour of `overlap`, every release
    would confound its neighbours on the shop's KPIs; half an hour apart they are told apart.
    """
    out: list[str] = []
    for line in base.splitlines():
        out.append(line)
        name = line.split("=", 1)[1].strip().strip('"') if line.startswith("name =") else None
        if name in SHOP_KPIS:
            out.append('level = "product"')
            out.append(f'overlap = "{overlap}"')
    return "\n".join(out) + "\n"


def shop_valuestream_text(base: str, services: list[str]) -> str:
    """The bundled value-stream definition with one product, the shop, of `services`."""
    members = ", ".join(f'"{s}"' for s in services)
    return base.replace("[value_streams]\n", f"[value_streams]\n{SHOP} = [{members}]\n", 1)


def as_shop_event(ev: Any) -> Any:
    """A simulated event as the shop measures it: business samples are the shop's (product
    "shop", keyed by it); releases, latency and errors stay their service's."""
    from stream_app.events.model import KpiSample

    if type(ev) is KpiSample and ev.kpi in SHOP_STREAMS:
        return dataclasses.replace(ev, product=SHOP)
    return ev


def run_demo(
    settings: Settings,
    *,
    seed: int = 7,
    keep_running: bool = False,
    timeout: float = 900.0,
    console: Console | None = None,
    products: bool = False,
) -> int:
    """Run the whole demo; returns the process exit code. Cleans up on return and on Ctrl-C.

    With `products`, the shop's orders, revenue, conversion and cart value are product-level
    KPIs: every service's release is judged on the shop's (and on its own latency and errors).
    """
    from stream_app import codec, simulate
    from stream_app.broker import start_broker, stop_broker
    from stream_app.producer import Sender, ensure_topics

    # Piped output is 80 columns by default, too narrow for the verdict table.
    con = console or Console(width=None if sys.stdout.isatty() else 140)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    workdir = (settings.data_dir / f"demo-{run_id}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes()
    started_broker = False
    collector: VerdictCollector | None = None
    sender: Any = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALUELOOP_")}
    restore_signals = _cleanup_on_signals()
    try:
        # 1. Kafka
        if settings.kafka_bootstrap_servers:
            prefix = f"demo-{run_id}."
            names = {f"topic_{r}": prefix + n for r, n in settings.topic_names().items()}
            names["topic_product_releases"] = prefix + settings.topic_product_releases
            s = settings.model_copy(update={**names, "app_id": f"valueloop-demo-{run_id}"})
            con.print(f"[bold]Kafka[/] {s.kafka_bootstrap_servers} (configured), topics {prefix}*")
        else:
            con.print("[bold]Kafka[/] starting a local broker (first run resolves the jars)...")
            info = start_broker(workdir, port=settings.broker_port, heap=settings.broker_heap)
            started_broker = True
            s = settings.model_copy(update={"kafka_bootstrap_servers": info.bootstrap})
            con.print(f"  broker pid {info.pid} at {info.bootstrap}")
        ensure_topics(s)

        # 2. Worker
        port = s.metrics_port if s.metrics_port and port_free(s.metrics_port) else free_port()
        s = s.model_copy(update={"metrics_port": port})
        wenv = {
            **env,
            **{
                # Secrets go to the worker's environment only (str() of a SecretStr is a mask).
                f"VALUELOOP_{k.upper()}": (
                    v.get_secret_value() if isinstance(v, SecretStr) else str(v)
                )
                for k, v in s.model_dump().items()
                if v is not None
            },
        }
        wenv["VALUELOOP_DATA_DIR"] = str(workdir)
        sc = simulate.demo_scenario(seed)
        if products:
            data = Path(__file__).parent / "data"
            kpis = workdir / "kpis-shop.toml"
            kpis.write_text(shop_catalog_text((data / "kpis.toml").read_text()))
            vs = workdir / "valuestream-shop.toml"
            names_ = [svc.name for svc in sc.services]
            vs.write_text(shop_valuestream_text((data / "valuestream.toml").read_text(), names_))
            wenv["VALUELOOP_KPIS_FILE"] = str(kpis)
            wenv["VALUELOOP_VALUESTREAM_FILE"] = str(vs)
            con.print(f"[bold]Products[/] {SHOP} = {', '.join(names_)}: business KPIs per shop")
        wlog = workdir / "worker.log"
        worker = procs.start("worker", [sys.executable, "-m", "stream_app", "worker"], wlog, wenv)
        metrics_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_get(metrics_url + "/health")[0] == 200, 120, "worker", worker, wlog)
        con.print(f"[bold]Worker[/] pid {worker.pid}, metrics {metrics_url}/metrics")

        # 3. Prometheus (optional)
        prom_url = start_prometheus(procs, workdir, port, env, con)

        # 4. Simulator -> Kafka, with live progress
        truth = {
            (t.release_id, t.kpi): t
            for t in simulate.ground_truth(sc)
            # A service's true effect on its own orders is not the shop's (diluted by its share).
            if not (products and t.kpi in SHOP_KPIS)
        }
        labels = {r.id: p.label for r, p in zip(simulate.releases(sc), sc.releases, strict=True)}
        collector = VerdictCollector(s)
        collector.start()
        sender = Sender(s, log_level=3)  # librdkafka: errors only, no start-up warnings
        topics = s.topic_names()
        sent = 0
        last_time = 0.0
        expected_releases: set[str] = set()

        def progress() -> Table:
            t = Table(title="valueloop demo", show_header=False)
            t.add_row("events sent", f"{sent:,}")
            t.add_row(
                "event time",
                time.strftime("%a %H:%M", time.gmtime(last_time)) if last_time else "-",
            )
            t.add_row("verdict events", str(collector.count if collector else 0))
            t.add_row("final verdicts", str(len(collector.finals()) if collector else 0))
            return t

        # Pause before the bad release's service ships again, so that the page for it can fire
        # while it is still the service's current release.
        bad = [p for p in sc.releases if p.label == "bad"]
        pause_at = min(
            (
                p.time
                for p in sc.releases
                for b in bad
                if p.service == b.service and p.time > b.time
            ),
            default=float("inf"),
        )
        fired: list[dict[str, Any]] = []
        with Live(progress(), console=con, refresh_per_second=4, transient=False) as live:
            for ev in simulate.generate(sc):
                if ev.time >= pause_at:
                    pause_at = float("inf")
                    sender.flush(60)
                    wait_consumed(metrics_url, sent, timeout, live, progress)
                    if prom_url:
                        fired = wait_for_page(prom_url, {b.service for b in bad}, live, progress)
                if products:
                    ev = as_shop_event(ev)
                role = codec.role_of(ev)
                sender.send(topics[role], codec.encode(ev), codec.key_of(ev))
                sent += 1
                last_time = ev.time
                if role == "deployments":
                    expected_releases.add(getattr(ev, "id", ""))
                if sent % 2000 == 0:
                    live.update(progress())
            sender.flush(60)
            sender.close()  # its client must not outlive the broker (it would log reconnects)
            sender = None
            live.update(progress())
            # 5. Wait for the verdicts the stream can close.
            deadline = time.monotonic() + timeout
            stable_since = time.monotonic()
            last_count = -1
            while time.monotonic() < deadline:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited:\n{wlog.read_text()[-2000:]}")
                live.update(progress())
                c = collector.count
                if c != last_count:
                    last_count, stable_since = c, time.monotonic()
                elif c > 0 and time.monotonic() - stable_since > 8:
                    break
                time.sleep(0.5)
        time.sleep(3 if prom_url else 0)  # let Prometheus scrape and evaluate once more
        print_summary(con, collector.finals(), truth, labels, metrics_url, prom_url, fired)
        if keep_running:
            con.print("\n[bold]Running[/] until Ctrl-C ...")
            while worker.poll() is None:
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        con.print("\ninterrupted: cleaning up")
        return 130
    finally:
        # Every Kafka client of this process stops before the broker does: a client left
        # running would log "Connect ... failed: Connection refused" after the summary.
        if sender is not None:
            sender.close(timeout=0)
        if collector is not None:
            collector.stop_event.set()
            collector.join(5)
        procs.stop_all()
        if started_broker:
            stop_broker(workdir)
        if not keep_running:
            shutil.rmtree(workdir, ignore_errors=True)
        restore_signals()


def start_prometheus(
    procs: Processes, workdir: Path, worker_port: int, env: dict[str, str], con: Console
) -> str | None:
    """Start Debian's Prometheus with the shipped rules on loopback; None when not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        con.print(
            "[yellow]Prometheus not installed[/]: `apt-get install prometheus` (Debian) to see "
            "alerts; running the rest."
        )
        return None
    port = 9090 if port_free(9090) else free_port()
    template = (REPO_ROOT / "deploy/prometheus/prometheus.demo.yml.template").read_text()
    conf = (
        template.replace("{{WORKER_TARGET}}", f"127.0.0.1:{worker_port}")
        .replace("{{ALERTMANAGER_TARGET}}", f"127.0.0.1:{free_port()}")
        .replace("{{RULES_DIR}}", str(REPO_ROOT / "deploy/prometheus/rules"))
    )
    cfg = workdir / "prometheus.yml"
    cfg.write_text(conf)
    log = workdir / "prometheus.log"
    p = procs.start(
        "prometheus",
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log,
        env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_get(url + "/-/ready")[0] == 200, 60, "prometheus", p, log)
    con.print(f"[bold]Prometheus[/] pid {p.pid}, {url}")
    return url


def wait_consumed(metrics_url: str, n: int, timeout: float, live: Live, progress: Any) -> None:
    """Wait until the worker has consumed (accepted or dead-lettered) n input messages."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live.update(progress())
        _, body = http_get(metrics_url + "/metrics")
        text = body.decode(errors="replace")
        done = sum(v for _, v in metric_samples(text, "valueloop_events_accepted_total")) + sum(
            v for _, v in metric_samples(text, "valueloop_events_rejected_total")
        )
        if done >= n:
            return
        time.sleep(0.5)


def wait_for_page(
    prom_url: str, services: set[str], live: Live, progress: Any, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """Wait (showing progress) until Prometheus fires the release-degraded page for `services`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live.update(progress())
        alerts = [
            a
            for a in firing_alerts(prom_url)
            if a["labels"].get("alertname") == "ReleaseDegradedCriticalKPI"
            and a["labels"].get("service") in services
        ]
        if alerts:
            return alerts
        time.sleep(1)
    return []


def firing_alerts(prom_url: str) -> list[dict[str, Any]]:
    """Alerts Prometheus reports as firing."""
    status, body = http_get(prom_url + "/api/v1/alerts")
    if status != 200:
        return []
    alerts = orjson.loads(body)["data"]["alerts"]
    return [a for a in alerts if a.get("state") == "firing"]


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):+.1f}%"


def print_summary(
    con: Console,
    finals: dict[tuple[str, str], dict[str, Any]],
    truth: dict[tuple[str, str], Any],
    labels: dict[str, str],
    metrics_url: str,
    prom_url: str | None,
    fired: list[dict[str, Any]] | None = None,
) -> None:
    """The end-of-demo summary: verdicts per release, bottleneck, DORA, firing alerts, URLs."""
    colors = {
        "degraded": "red",
        "improved": "green",
        "neutral": "white",
        "inconclusive": "yellow",
        "confounded": "magenta",
    }
    t = Table(title="Release verdicts (final)")
    for col in (
        "product",
        "service",
        "version",
        "planned",
        "kpi",
        "change",
        "95% CI",
        "verdict",
        "true effect",
    ):
        t.add_column(col)
    for (rid, kpi), v in sorted(finals.items(), key=lambda kv: (kv[1]["release_time"], kv[0][1])):
        tr = truth.get((rid, kpi))
        ci = f"[{_fmt(v.get('ci_low'))}, {_fmt(v.get('ci_high'))}]"
        verdict = v["verdict"]
        t.add_row(
            v.get("product") or v["service"],
            v["service"],
            v["version"],
            labels.get(rid, ""),
            kpi,
            _fmt(v.get("change")),
            ci,
            f"[{colors.get(verdict, 'white')}]{verdict}[/]",
            _fmt(tr.effect) if tr is not None else "",
        )
    con.print(t)
    _, body = http_get(metrics_url + "/metrics")
    text = body.decode(errors="replace")
    bottlenecks = [
        (lbl["value_stream"], lbl["stage"])
        for lbl, v in metric_samples(text, "valueloop_bottleneck_stage")
        if v >= 1
    ]
    if bottlenecks:
        waits = {
            (lbl["value_stream"], lbl["stage"]): v
            for lbl, v in metric_samples(text, "valueloop_stage_wait_seconds")
            if lbl.get("percentile") == "0.5"
        }
        for vs, stage in sorted(bottlenecks):
            w = waits.get((vs, stage))
            con.print(
                f"[bold]Bottleneck[/] {vs}: [red]{stage}[/]"
                + (f" (median wait {w / 3600:.1f} h)" if w else "")
            )
    dora = Table(title="DORA (per service)")
    for col in ("service", "deployments", "change failure rate", "lead time p50", "recovery p50"):
        dora.add_column(col)
    deploys = {lbl["service"]: v for lbl, v in metric_samples(text, "valueloop_deployments_total")}
    cfr = {lbl["service"]: v for lbl, v in metric_samples(text, "valueloop_change_failure_ratio")}
    lead = {
        lbl["service"]: v
        for lbl, v in metric_samples(text, "valueloop_lead_time_seconds")
        if lbl.get("percentile") == "0.5"
    }
    rec = {
        lbl["service"]: v
        for lbl, v in metric_samples(text, "valueloop_recovery_time_seconds")
        if lbl.get("percentile") == "0.5"
    }
    for svc in sorted(deploys):
        dora.add_row(
            svc,
            f"{deploys[svc]:.0f}",
            f"{100 * cfr.get(svc, 0):.0f}%",
            f"{lead[svc] / 3600:.1f} h" if svc in lead else "-",
            f"{rec[svc] / 3600:.1f} h" if svc in rec else "-",
        )
    if deploys:
        con.print(dora)
    if fired:
        con.print("[bold]Paged during the demo[/] (while the bad release was current):")
        for a in fired:
            lb = a["labels"]
            con.print(
                f"  [red]{lb.get('alertname')}[/] service={lb.get('service', '')} "
                f"kpi={lb.get('kpi', '')} version={lb.get('version', '')}: "
                f"{a.get('annotations', {}).get('summary', '')}"
            )
    if prom_url:
        alerts = firing_alerts(prom_url)
        con.print(f"[bold]Firing alerts[/] ({len(alerts)}):")
        for a in alerts:
            lb = a["labels"]
            con.print(
                f"  [red]{lb.get('alertname')}[/] service={lb.get('service', '')} "
                f"kpi={lb.get('kpi', '')} version={lb.get('version', '')}: "
                f"{a.get('annotations', {}).get('summary', '')}"
            )
        con.print(f"Prometheus: {prom_url}/alerts  {prom_url}/graph")
    con.print(f"Worker metrics: {metrics_url}/metrics   health: {metrics_url}/health")
    con.print(
        f"Web view: {metrics_url}/ui/vsm (value stream map)   {metrics_url}/ui/releases"
        f"   {metrics_url}/ui/dora   (up while the demo runs: --keep-running)"
    )
