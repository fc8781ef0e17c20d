"""Local single-node Apache Kafka broker (KRaft, no Docker): fetch its jars, start, stop, status."""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream_app.errors import BrokerError

if TYPE_CHECKING:
    from stream_app.settings import Settings

KAFKA_VERSION = "3.9.1"
MARKER_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
LIBS_ENV = "VALUELOOP_BROKER_LIBS"
HOST = "127.0.0.1"
BROKER_SUBDIR = "broker"
RECORD_FILE = "broker.json"
LOG_FILE = "broker.log"
PROPERTIES_FILE = "server.properties"
SASL_FILE = "sasl.json"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
BROKER_SCRAM_USER = "valueloop-broker"

# SCRAM names and passwords go into `kafka-storage format --add-scram 'M=[name=..,password=..]'`,
# whose parser splits on '=', ',' and brackets: keep to characters it passes through untouched.
_SCRAM_TOKEN = re.compile(r"[A-Za-z0-9._~@+!#%^*:/?-]{1,256}")

_PARTIAL_MARK = ".partial-"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)

# Brokers started by this process, so their exit is reaped (and never mistaken for a live zombie).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class BrokerInfo:
    """A running local broker.

    Attributes:
        pid: process id of the broker JVM.
        bootstrap: ``host:port`` for Kafka clients (always on 127.0.0.1).
        data_dir: the valueloop data dir the broker lives in (its files are under ``broker/``).
        log_path: the broker's console log (WARN and above, plus the start-up line).
        security_protocol: ``PLAINTEXT``, or ``SASL_PLAINTEXT`` for a broker with SCRAM users.
        sasl_mechanism: the SCRAM mechanism of a ``SASL_PLAINTEXT`` broker, else None.
    """

    pid: int
    bootstrap: str
    data_dir: Path
    log_path: Path
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None


def find_repo_root() -> Path:
    """Return the checkout that holds ``deploy/kafka`` (this package's parent directory).

    Raises:
        BrokerError: the package is not running from a source checkout.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "deploy" / "kafka" / "pom.xml").is_file():
        raise BrokerError(
            f"deploy/kafka/pom.xml not found under {root}: run from a source checkout"
        )
    return root


def default_libs_dir(repo_root: Path) -> Path:
    """Return the jar cache: ``$VALUELOOP_BROKER_LIBS`` if set, else ``deploy/kafka/libs``."""
    override = os.environ.get(LIBS_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return repo_root / "deploy" / "kafka" / "libs"


def resolve_jars(repo_root: Path, cache_dir: Path) -> Path:
    """Copy the broker's runtime jars from Maven into ``cache_dir`` unless they are already there.

    Maven writes into a sibling temporary directory that is renamed into place only when complete,
    so an interrupted run never leaves a half-filled cache.

    Args:
        repo_root: the checkout holding ``deploy/kafka/pom.xml``.
        cache_dir: where the jars end up.

    Returns:
        ``cache_dir``.

    Raises:
        BrokerError: Maven is missing or failed, or ``cache_dir`` holds something else.
    """
    if (cache_dir / MARKER_JAR).is_file():
        return cache_dir
    pom = repo_root / "deploy" / "kafka" / "pom.xml"
    if not pom.is_file():
        raise BrokerError(f"{pom} not found")
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "mvn (Apache Maven) is not on PATH; it is needed once to fetch the Kafka jars"
        )
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(cache_dir)
    partial = cache_dir.with_name(f".{cache_dir.name}{_PARTIAL_MARK}{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={partial}",
    ]
    log.info("resolving Kafka %s jars into %s", KAFKA_VERSION, cache_dir)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            output = _last_lines(done.stdout + done.stderr, 40)
            raise BrokerError(f"mvn failed with exit code {done.returncode}:\n{output}")
        if not (partial / MARKER_JAR).is_file():
            raise BrokerError(f"mvn finished but {MARKER_JAR} is missing from {partial}")
        _move_into_place(partial, cache_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return cache_dir


def new_cluster_id() -> str:
    """Return a Kafka cluster id: url-safe base64 of a UUID4, 22 chars, never starting with '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def render_server_properties(
    template: str, *, port: int, controller_port: int, log_dir: Path
) -> str:
    """Fill the server.properties template (``${port}``, ``${controller_port}``, ``${log_dir}``).

    Raises:
        BrokerError: the template names a placeholder that is not supplied.
    """
    try:
        return string.Template(template).substitute(
            port=port, controller_port=controller_port, log_dir=str(log_dir)
        )
    except (KeyError, ValueError) as exc:
        raise BrokerError(f"bad server.properties template: {exc!r}") from exc


def render_sasl_overlay(
    template: str,
    *,
    port: int,
    controller_port: int,
    mechanism: str,
    broker_user: str,
    broker_password: str,
) -> str:
    """Fill the SASL overlay template that is appended to server.properties for a SCRAM broker.

    Raises:
        BrokerError: the template names a placeholder that is not supplied.
    """
    try:
        return string.Template(template).substitute(
            port=port,
            controller_port=controller_port,
            mechanism=mechanism,
            mechanism_lower=mechanism.lower(),
            broker_user=broker_user,
            broker_password=broker_password,
        )
    except (KeyError, ValueError) as exc:
        raise BrokerError(f"bad sasl.properties template: {exc!r}") from exc


def broker_answers(
    bootstrap: str, timeout: float = 5.0, config: Mapping[str, Any] | None = None
) -> bool:
    """Return whether the cluster at ``bootstrap`` answers a metadata request within ``timeout``.

    ``config`` adds client settings, e.g. ``security.protocol`` and ``sasl.*`` for a SCRAM broker.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # librdkafka's connection-refused chatter goes to this module's logger, not to stderr.
    # The stubs type config values as str | int | float, but librdkafka's "logger" takes a Logger.
    conf: dict[str, Any] = {**(config or {}), "bootstrap.servers": bootstrap, "logger": log}
    admin = AdminClient(conf)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def broker_status(data_dir: Path) -> BrokerInfo | None:
    """Return the broker recorded in ``data_dir`` if its process is alive, else ``None``.

    Only the process is checked; use :func:`broker_answers` to check that it serves clients.
    """
    broker_dir = data_dir.resolve() / BROKER_SUBDIR
    record = _read_record(broker_dir)
    if record is None:
        return None
    info = _info_from_record(data_dir.resolve(), record)
    if info is None or not _is_our_broker(info.pid, broker_dir):
        return None
    return info


def start_broker(
    data_dir: Path,
    port: int = 0,
    heap: str = "512m",
    timeout: float = 90,
    *,
    die_with_parent: bool = False,
    sasl_users: Mapping[str, str] | None = None,
    sasl_mechanism: str = "SCRAM-SHA-256",
) -> BrokerInfo:
    """Start a KRaft broker+controller on 127.0.0.1 with its files in ``data_dir/broker``.

    A broker already recorded there and alive is reused (after waiting for it to answer).

    With ``sasl_users`` the client listener is ``SASL_PLAINTEXT`` with SCRAM (``sasl_mechanism``):
    the users are created when the storage is formatted, next to the broker's own user
    (``valueloop-broker``, random password kept in ``broker/sasl.json``, mode 0600), and every
    user is checked to log in before this returns. The controller listener stays PLAINTEXT on
    loopback. A data dir keeps the users it was first formatted with: asking for others raises.

    Args:
        data_dir: valueloop data dir; created if missing.
        port: client port; 0 picks a free one. The controller port is always picked free.
        heap: JVM heap size (``-Xms``/``-Xmx``), e.g. ``"512m"``.
        timeout: seconds to wait until an AdminClient can list topics.
        die_with_parent: on Linux, kill the broker when the calling thread's process dies
            (for test sessions; a CLI-started broker must outlive its command).
        sasl_users: SCRAM user name -> password; None or empty: a PLAINTEXT broker. Names and
            passwords are limited to ``[A-Za-z0-9._~@+!#%^*:/?-]`` (the format tool's syntax).
        sasl_mechanism: ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``.

    Returns:
        The running broker.

    Raises:
        BrokerError: the broker could not be prepared or did not come up; it is killed and the
            message carries the tail of its log (never a password).
    """
    users = dict(sasl_users or {})
    if users:
        _check_scram_users(users, sasl_mechanism)
    data_dir = data_dir.resolve()
    broker_dir = data_dir / BROKER_SUBDIR
    broker_dir.mkdir(parents=True, exist_ok=True)
    with _locked(broker_dir / "broker.lock"):
        running = broker_status(data_dir)
        if running is not None:
            info = _await_existing(running, port, timeout, users, sasl_mechanism)
        else:
            info = _launch(
                data_dir, broker_dir, port, heap, timeout, die_with_parent, users, sasl_mechanism
            )
        try:
            _check_logins(info, users, sasl_mechanism)
        except BrokerError:
            if running is None:  # do not leave a broker behind that its caller cannot use
                stop_broker(data_dir)
            raise
    return info


def stop_broker(data_dir: Path, timeout: float = 30) -> bool:
    """Stop the broker recorded in ``data_dir``: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns:
        True if a live broker was stopped, False if none was running.

    Raises:
        BrokerError: the process survived SIGKILL.
    """
    broker_dir = data_dir.resolve() / BROKER_SUBDIR
    info = broker_status(data_dir)
    if info is None:
        (broker_dir / RECORD_FILE).unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    if not _wait_for_exit(info.pid, timeout):
        log.warning("broker pid %d ignored SIGTERM for %.0f s; sending SIGKILL", info.pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
        if not _wait_for_exit(info.pid, 10):
            raise BrokerError(f"broker pid {info.pid} is still alive after SIGKILL")
    (broker_dir / RECORD_FILE).unlink(missing_ok=True)
    return True


def ensure_broker(settings: Settings) -> str:
    """Return the bootstrap servers to use, starting (or reusing) the local broker when none is set.

    When ``settings.kafka_bootstrap_servers`` points at an existing cluster nothing is started.
    With ``VALUELOOP_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT`` and a SCRAM mechanism, the local
    broker gets a SCRAM listener and the configured user (see :func:`start_broker`).

    Raises:
        BrokerError: the security settings ask for something the local broker cannot serve.
    """
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    users: dict[str, str] = {}
    mechanism = settings.kafka_sasl_mechanism or "SCRAM-SHA-256"
    if settings.kafka_security_protocol != "PLAINTEXT":
        if (
            settings.kafka_security_protocol != "SASL_PLAINTEXT"
            or mechanism not in SCRAM_MECHANISMS
        ):
            raise BrokerError(
                "the local broker serves PLAINTEXT or SASL_PLAINTEXT with SCRAM-SHA-256/512, not "
                f"{settings.kafka_security_protocol} {settings.kafka_sasl_mechanism or ''}".rstrip()
            )
        password = settings.kafka_sasl_password
        if settings.kafka_sasl_username and password is not None:
            users[settings.kafka_sasl_username] = password.get_secret_value()
    info = start_broker(
        settings.data_dir,
        port=settings.broker_port,
        heap=settings.broker_heap,
        sasl_users=users,
        sasl_mechanism=mechanism,
    )
    return info.bootstrap


# --- internals -----------------------------------------------------------------------------------


def _launch(
    data_dir: Path,
    broker_dir: Path,
    port: int,
    heap: str,
    timeout: float,
    die_with_parent: bool,
    users: Mapping[str, str],
    mechanism: str,
) -> BrokerInfo:
    deadline = time.monotonic() + timeout
    repo_root = find_repo_root()
    kafka_dir = repo_root / "deploy" / "kafka"
    libs = resolve_jars(repo_root, default_libs_dir(repo_root))
    java = _find_java()

    broker_port = port or _free_port()
    if port and not _port_is_free(port):
        raise BrokerError(f"port {HOST}:{port} is already in use")
    controller_port = _free_port(avoid={broker_port})
    properties = broker_dir / PROPERTIES_FILE
    template = (kafka_dir / "server.properties.template").read_text(encoding="utf-8")
    text = render_server_properties(
        template,
        port=broker_port,
        controller_port=controller_port,
        log_dir=broker_dir / "kraft",
    )
    sasl = _sasl_state(broker_dir, users, mechanism) if users else None
    if sasl is not None:
        overlay = (kafka_dir / "sasl.properties.template").read_text(encoding="utf-8")
        text += "\n" + render_sasl_overlay(
            overlay,
            port=broker_port,
            controller_port=controller_port,
            mechanism=mechanism,
            broker_user=sasl["broker_user"],
            broker_password=sasl["broker_password"],
        )
    _write_private(properties, text)  # holds the broker's SCRAM password when SASL is on
    jvm_common = [
        f"-Dlog4j.configuration=file:{kafka_dir / 'log4j.properties'}",
        f"-Dkafka.logs.dir={broker_dir}",
        "-Djava.awt.headless=true",
        "-cp",
        str(libs / "*"),  # the JVM expands the wildcard itself
    ]
    scram = {**users, sasl["broker_user"]: sasl["broker_password"]} if sasl else {}
    _format_storage(
        java, jvm_common, properties, _cluster_id(broker_dir / "kraft"), scram, mechanism
    )

    log_path = broker_dir / LOG_FILE
    bootstrap = f"{HOST}:{broker_port}"
    cmd = [
        java,
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:-UsePerfData",  # no /tmp/hsperfdata_* files left behind by a killed broker
        *jvm_common,
        "kafka.Kafka",
        str(properties),
    ]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=broker_dir,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    _CHILDREN[proc.pid] = proc
    info = BrokerInfo(
        pid=proc.pid,
        bootstrap=bootstrap,
        data_dir=data_dir,
        log_path=log_path,
        security_protocol="SASL_PLAINTEXT" if sasl else "PLAINTEXT",
        sasl_mechanism=mechanism if sasl else None,
    )
    # Recorded before it is ready, so stop_broker can find it even if this caller dies now.
    _write_record(
        broker_dir,
        {
            "pid": proc.pid,
            "bootstrap": bootstrap,
            "controller_port": controller_port,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "log_path": str(log_path),
            "kafka_version": KAFKA_VERSION,
            "security_protocol": info.security_protocol,
            "sasl_mechanism": info.sasl_mechanism,
        },
    )
    try:
        _wait_until_ready(info, deadline, _probe_config(info))
    except BaseException:
        _kill(proc)
        (broker_dir / RECORD_FILE).unlink(missing_ok=True)
        raise
    log.info("Kafka %s broker pid %d answers at %s", KAFKA_VERSION, proc.pid, bootstrap)
    return info


def _await_existing(
    info: BrokerInfo, port: int, timeout: float, users: Mapping[str, str], mechanism: str
) -> BrokerInfo:
    if port and not info.bootstrap.endswith(f":{port}"):
        raise BrokerError(
            f"a broker (pid {info.pid}) already runs at {info.bootstrap} in {info.data_dir}; "
            f"stop it before asking for port {port}"
        )
    wanted = ("SASL_PLAINTEXT", mechanism) if users else ("PLAINTEXT", None)
    if (info.security_protocol, info.sasl_mechanism) != wanted:
        running = f"{info.security_protocol} {info.sasl_mechanism or ''}".rstrip()
        raise BrokerError(
            f"a broker (pid {info.pid}) already runs at {info.bootstrap} in {info.data_dir} with "
            f"{running}, not {' '.join(w for w in wanted if w)}; stop it first"
        )
    probe_config = _probe_config(info)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        remaining = min(5.0, max(0.5, deadline - time.monotonic()))
        if broker_answers(info.bootstrap, timeout=remaining, config=probe_config):
            return info
        if not _pid_alive(info.pid):
            break
        time.sleep(0.5)
    raise BrokerError(
        f"broker pid {info.pid} recorded in {info.data_dir} does not answer at {info.bootstrap}; "
        f"stop it first.\n{_log_tail(info.log_path)}"
    )


def _wait_until_ready(info: BrokerInfo, deadline: float, config: Mapping[str, Any]) -> None:
    port = int(info.bootstrap.rsplit(":", 1)[1])
    while True:
        child = _CHILDREN.get(info.pid)
        code = child.poll() if child is not None else None
        if code is not None:
            raise BrokerError(
                f"broker exited with code {code} during start-up; see {info.log_path}\n"
                f"{_log_tail(info.log_path)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"broker did not answer at {info.bootstrap} in time; see {info.log_path}\n"
                f"{_log_tail(info.log_path)}"
            )
        # A cheap TCP probe first: an AdminClient against a closed port only logs refusals.
        if _port_accepts(port) and broker_answers(
            info.bootstrap, timeout=min(5.0, remaining), config=config
        ):
            return
        time.sleep(0.2)


def _cluster_id(log_dir: Path) -> str:
    """Return the id a previous run formatted ``log_dir`` with, else a new one.

    ``StorageTool format --ignore-formatted`` still refuses a directory formatted with another id.
    """
    with contextlib.suppress(OSError):
        for line in (log_dir / "meta.properties").read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "cluster.id" and value.strip():
                return value.strip()
    return new_cluster_id()


def _format_storage(
    java: str,
    jvm_common: Sequence[str],
    properties: Path,
    cluster_id: str,
    scram: Mapping[str, str] | None = None,
    mechanism: str = "SCRAM-SHA-256",
) -> None:
    # SCRAM users can only be written at format time (KRaft has no broker to alter yet); a
    # formatted dir ignores them (--ignore-formatted) and keeps the ones it has.
    scram_args = [
        arg
        for name, password in (scram or {}).items()
        for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
    ]
    cmd = [
        java,
        "-Xmx256m",
        *jvm_common,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(properties),
        "--ignore-formatted",
        *scram_args,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError("kafka StorageTool format did not finish in 120 s") from exc
    if done.returncode != 0:
        output = _last_lines(done.stdout + done.stderr, 40)
        for password in (scram or {}).values():
            output = output.replace(password, "***")
        raise BrokerError(f"formatting the broker storage failed ({done.returncode}):\n{output}")


def _check_scram_users(users: Mapping[str, str], mechanism: str) -> None:
    if mechanism not in SCRAM_MECHANISMS:
        raise BrokerError(f"sasl_mechanism must be one of {', '.join(SCRAM_MECHANISMS)}")
    for name, password in users.items():
        if name == BROKER_SCRAM_USER:
            raise BrokerError(f"SCRAM user name {name!r} is reserved for the broker itself")
        if not _SCRAM_TOKEN.fullmatch(name):
            raise BrokerError(f"SCRAM user name {name!r} must match {_SCRAM_TOKEN.pattern}")
        if not _SCRAM_TOKEN.fullmatch(password):
            raise BrokerError(
                f"the password of SCRAM user {name!r} must match {_SCRAM_TOKEN.pattern}"
            )


def _sasl_state(broker_dir: Path, users: Mapping[str, str], mechanism: str) -> dict[str, Any]:
    """The broker's own SCRAM login, made once per data dir and kept next to its storage.

    Raises:
        BrokerError: the storage was formatted with another mechanism or without these users.
    """
    path = broker_dir / SASL_FILE
    formatted = (broker_dir / "kraft" / "meta.properties").is_file()
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = None
    if formatted:
        if not isinstance(state, dict):
            raise BrokerError(
                f"{broker_dir} was formatted without SCRAM users; delete it to start a broker "
                "with users"
            )
        had = sorted(state.get("users", []))
        if state.get("mechanism") != mechanism or not set(users) <= set(had):
            raise BrokerError(
                f"{broker_dir} was formatted with {state.get('mechanism')} users {had}, not "
                f"{mechanism} users {sorted(users)}; delete it to start a broker with these users"
            )
        return state
    state = {
        "mechanism": mechanism,
        "users": sorted(users),
        "broker_user": BROKER_SCRAM_USER,
        "broker_password": secrets.token_urlsafe(24),
    }
    _write_private(path, json.dumps(state, indent=2) + "\n")
    return state


def _probe_config(info: BrokerInfo) -> dict[str, Any]:
    """Client settings for the readiness probe: the broker's own SCRAM login on a SASL broker."""
    if info.security_protocol != "SASL_PLAINTEXT":
        return {}
    try:
        state = json.loads((info.data_dir / BROKER_SUBDIR / SASL_FILE).read_text(encoding="utf-8"))
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": info.sasl_mechanism or state["mechanism"],
            "sasl.username": state["broker_user"],
            "sasl.password": state["broker_password"],
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BrokerError(f"cannot read the broker's SCRAM login from {SASL_FILE}: {exc}") from exc


def _check_logins(info: BrokerInfo, users: Mapping[str, str], mechanism: str) -> None:
    """Every requested user logs in (a reused data dir may hold other passwords)."""
    from stream_app.preflight import AUTH, probe

    for name, password in users.items():
        result = probe(
            {
                "bootstrap.servers": info.bootstrap,
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": mechanism,
                "sasl.username": name,
                "sasl.password": password,
            },
            timeout=15.0,
        )
        if result.ok:
            continue
        if result.problem == AUTH:
            raise BrokerError(
                f"SCRAM user {name!r} cannot log in to the broker at {info.bootstrap}: "
                f"{info.data_dir / BROKER_SUBDIR} keeps the users and passwords it was formatted "
                "with; delete it to change them"
            )
        raise BrokerError(f"SCRAM user {name!r} cannot reach {info.bootstrap}: {result.detail}")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it may hold a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java is not on PATH (OpenJDK 17 or newer runs the local broker)")
    return java


def _free_port(avoid: set[int] | None = None) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in (avoid or set()):
            return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the broker's own listener: connections of a stopped broker in TIME_WAIT must not
        # keep it from starting again on its port (a listening process still does).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """Runs in the forked child before exec: ask Linux to SIGKILL it when its parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    if proc.returncode is not None:
        _CHILDREN.pop(proc.pid, None)


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0) but is gone
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _is_our_broker(pid: int, broker_dir: Path) -> bool:
    """Alive, and (where /proc exists) really the kafka.Kafka JVM of this dir, not a reused pid."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return b"kafka.Kafka" in cmdline and str(broker_dir / PROPERTIES_FILE).encode() in cmdline


def _wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _read_record(broker_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((broker_dir / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _info_from_record(data_dir: Path, record: dict[str, Any]) -> BrokerInfo | None:
    try:
        mechanism = record.get("sasl_mechanism")
        return BrokerInfo(
            pid=int(record["pid"]),
            bootstrap=str(record["bootstrap"]),
            data_dir=data_dir,
            log_path=Path(record["log_path"]),
            security_protocol=str(record.get("security_protocol") or "PLAINTEXT"),
            sasl_mechanism=str(mechanism) if mechanism else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _write_record(broker_dir: Path, record: dict[str, Any]) -> None:
    tmp = broker_dir / f".{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(broker_dir / RECORD_FILE)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _move_into_place(partial: Path, cache_dir: Path) -> None:
    if cache_dir.exists():
        if (cache_dir / MARKER_JAR).is_file():
            return  # another run finished first
        if any(cache_dir.iterdir()):
            raise BrokerError(f"{cache_dir} exists without {MARKER_JAR}; remove it and retry")
        cache_dir.rmdir()
    try:
        partial.rename(cache_dir)
    except OSError:
        if not (cache_dir / MARKER_JAR).is_file():
            raise


def _remove_stale_partials(cache_dir: Path) -> None:
    """Delete temporary jar folders left behind by runs that were cut off."""
    prefix = f".{cache_dir.name}{_PARTIAL_MARK}"
    for candidate in cache_dir.parent.glob(f"{prefix}*"):
        owner = candidate.name[len(prefix) :]
        if owner.isdigit() and not _pid_alive(int(owner)):
            shutil.rmtree(candidate, ignore_errors=True)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return _last_lines(text, lines) or f"({path} is empty)"


def _last_lines(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m stream_app.broker {resolve,start,stop,status}`` (the real CLI: valueloop)."""
    parser = argparse.ArgumentParser(prog="python -m stream_app.broker", description=__doc__)
    parser.add_argument("command", choices=["resolve", "start", "stop", "status"], nargs="?")
    parser.add_argument("--data-dir", type=Path, default=Path(".valueloop"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heap", default="512m")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = args.command or "resolve"
    try:
        if command == "resolve":
            repo_root = find_repo_root()
            print(resolve_jars(repo_root, default_libs_dir(repo_root)))
        elif command == "start":
            info = start_broker(args.data_dir, port=args.port, heap=args.heap)
            print(json.dumps({"pid": info.pid, "bootstrap": info.bootstrap}))
        elif command == "stop":
            print("stopped" if stop_broker(args.data_dir) else "not running")
        else:
            status = broker_status(args.data_dir)
            if status is None:
                print("not running")
                return 1
            print(json.dumps({"pid": status.pid, "bootstrap": status.bootstrap}))
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
