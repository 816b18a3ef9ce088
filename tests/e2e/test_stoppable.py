"""`scripts/_stoppable`, through which `scripts/test` runs pytest: a signal always ends it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Like pytest stuck in a hung test: it never acts on SIGTERM or SIGINT.
DEAF = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "print('up', flush=True)\n"
    "time.sleep(120)\n"
)


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sent", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)]
)
def test_a_signal_ends_a_command_that_ignores_it(sent: int, status: int) -> None:
    wrapper = subprocess.Popen(
        [str(ROOT / "scripts" / "_stoppable"), sys.executable, "-c", DEAF],
        env={**os.environ, "STOP_GRACE_SECONDS": "2"},
        # A shell started with SIGINT ignored (as a background job's children
        # are) may not trap it: start the wrapper as a terminal would.
        preexec_fn=_default_signals,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wrapper.stdout is not None
        assert wrapper.stdout.readline() == "up\n"
        started = time.monotonic()
        wrapper.send_signal(sent)
        _, stderr = wrapper.communicate(timeout=30)
    finally:
        wrapper.kill()
    assert wrapper.returncode == status
    assert time.monotonic() - started < 15
    assert "killed" in stderr


def test_the_commands_status_and_input_pass_through() -> None:
    finished = subprocess.run(
        [str(ROOT / "scripts" / "_stoppable"), "sh", "-c", "cat; exit 7"],
        input="typed\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (finished.returncode, finished.stdout) == (7, "typed\n")
