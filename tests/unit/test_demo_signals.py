"""`valueloop demo` cleans up on SIGTERM (and on a SIGINT a background shell would ignore)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from stream_app import demo


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_interrupts_like_ctrl_c_and_handlers_are_restored(sig: int) -> None:
    before = signal.getsignal(sig)
    restore = demo._cleanup_on_signals()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
            time.sleep(2)  # the handler runs at the next bytecode boundary
    finally:
        restore()
    assert signal.getsignal(sig) == before
