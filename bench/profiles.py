"""Where the worker's time goes: py-spy on the running worker, summarised from collapsed stacks."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    """The py-spy executable (the venv's first), or None when it is not installed."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Recording:
    """py-spy recording a process (all its threads) until `stop`."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        exe = py_spy()
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if exe is None:
            return
        self.proc = subprocess.Popen(
            [
                *(exe, "record", "--pid", str(pid), "--rate", str(rate)),
                *("--format", "raw", "--nonblocking", "--output", str(out)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> dict[str, Any] | None:
        """Stop recording (SIGINT makes py-spy write its output) and summarise it."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if not self.out.exists():
            return None
        return summarise(self.out.read_text(errors="replace"))


AREAS = (
    ("valueloop core (stream_app/core)", ("stream_app/core/",)),
    ("valueloop pipeline", ("stream_app/pipeline.py",)),
    ("decode (codec, events)", ("stream_app/codec.py", "stream_app/events/")),
    ("valueloop edge (agents, state, metrics)", ("stream_app/agents/", "stream_app/metrics.py")),
    ("faust / mode", ("faust/", "mode/")),
    ("aiokafka (client, protocol)", ("aiokafka/", "kafka/")),
    ("asyncio / selectors", ("asyncio/", "selectors.py")),
    ("prometheus_client", ("prometheus_client/",)),
)


def _area(frame: str) -> str | None:
    for name, needles in AREAS:
        if any(n in frame for n in needles):
            return name
    return None


def summarise(raw: str, top: int = 12) -> dict[str, Any]:
    """Shares of samples: by area (the innermost known frame) and by function (self time)."""
    by_area: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        own[_short(leaf)] += n
        area = next((a for f in reversed(frames) if (a := _area(f)) is not None), "other")
        by_area[area] += n
        for a in {x for f in frames if (x := _area(f)) is not None}:
            inclusive[a] += n
    if total == 0:
        return {"samples": 0}
    return {
        "samples": total,
        "self_by_area": [[k, v / total] for k, v in by_area.most_common()],
        "inclusive_by_area": [[k, v / total] for k, v in inclusive.most_common()],
        "self_by_function": [[k, v / total] for k, v in own.most_common(top)],
    }


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py:12)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')')).name})" if where else name
