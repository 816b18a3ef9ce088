"""The suite's coverage settings: a measured run cannot hang when threads end.

With `concurrency = ["greenlet", ...]` coverage kept a weak reference, with a
Python callback, to each thread's greenlet; greenlet runs that callback in the
main thread when the thread ends, and on Python 3.11 under a tracer it could
spin there forever (the suite hung for 40 minutes, deaf to SIGTERM and SIGINT).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# Worker threads end while the main thread switches greenlets, as aiosqlite's
# connection threads end while SQLAlchemy runs statements in greenlets.
CHURN = """
import sys, threading, time, weakref
import greenlet

callbacks = []

def work(n):
    total = sum(range(n))
    callbacks.append(weakref.getweakrefcount(greenlet.getcurrent()))
    return total

def in_greenlet():
    child = greenlet.greenlet(lambda: greenlet.getcurrent().parent.switch(work(100)))
    child.switch()
    child.switch()

deadline = time.monotonic() + float(sys.argv[1])
while not callbacks or time.monotonic() < deadline:
    threads = [threading.Thread(target=work, args=(200,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(50):
        in_greenlet()
    for thread in threads:
        thread.join()
print("weak references to worker greenlets:", max(callbacks))
"""


def _measured(tmp_path: Path, seconds: float) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "churn.py"
    script.write_text(CHURN)
    # The child is measured by its own `coverage run`, not by this run's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "coverage",
            "run",
            f"--rcfile={ROOT / 'pyproject.toml'}",
            f"--data-file={tmp_path / '.coverage'}",
            str(script),
            str(seconds),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )


def test_threads_ending_under_the_suites_coverage_run_no_python_callback(
    tmp_path: Path,
) -> None:
    finished = _measured(tmp_path, 0)
    assert finished.returncode == 0, finished.stderr
    assert "weak references to worker greenlets: 0" in finished.stdout


def test_a_measured_run_survives_threads_ending_among_greenlets(tmp_path: Path) -> None:
    # Before: 3 of 3 such runs (20 s each) hung within 40 s with the script
    # measured, 1 of 3 with only `app` measured, as here.
    try:
        finished = _measured(tmp_path, 15)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"the measured run hung: {hung.stderr!r}")
    assert finished.returncode == 0, finished.stderr
