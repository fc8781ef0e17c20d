"""A closed Sender's client is gone: nothing reconnects (and logs) once the broker is away.

`valueloop demo` stops its producer before the broker; a client that outlived it logged
"Connect ... failed: Connection refused" after the summary. No broker here: the bootstrap
address is a closed local port, which is what a stopped broker looks like to the client.
"""

from __future__ import annotations

import socket
import subprocess
import sys

SCRIPT = """
import sys, time
from stream_app.settings import Settings
from stream_app.producer import Sender
sender = Sender(Settings(kafka_bootstrap_servers=sys.argv[1]), log_level=3)
time.sleep(1.0)  # the client has tried (and failed) to connect by now
if sys.argv[2] == "close":
    sender.close()
    sender.close()  # idempotent
sender = None
print("DROPPED", file=sys.stderr, flush=True)
time.sleep(3.0)
"""


def _refused_after_drop(how: str) -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: connections to it are refused
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, f"127.0.0.1:{port}", how],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    before, marker, after = out.stderr.partition("DROPPED")
    assert marker and "Connection refused" in before  # it did try to connect
    return after.count("Connection refused")


def test_a_closed_sender_stops_reconnecting() -> None:
    assert _refused_after_drop("close") == 0


def test_dropping_the_last_reference_alone_does_not_stop_it() -> None:
    # Why close() exists: the client holds the Sender's error callback (a reference cycle).
    assert _refused_after_drop("drop") > 0
