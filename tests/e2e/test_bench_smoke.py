"""The load benchmark's seconds-long smoke run (`bench/run --smoke`), so it never rots.

It starts the real service and the ceiling app as subprocesses on a tiny seed,
runs every endpoint for a second and writes its report into a temporary
directory (never into bench/results).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # starts a server and load clients
# The first cell of each table row: every measured endpoint and the ceiling.
ENDPOINT_LABELS = [
    "`GET /ceiling`",
    "`POST /auth/login`",
    "`POST /login-floor`",
    "`GET /users/me`",
    "`GET /items?limit=100`",
    "`GET /items?limit=100&cursor=",
    "`POST /items`",
    "`PATCH /items/{id}`",
    "`POST /auth/refresh`",
]


def _result_rows(report: str) -> list[list[str]]:
    """Rows of the results table: endpoint, rps, p50, p99, errors, ratio."""
    lines = [line for line in report.splitlines() if line.startswith("| `")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [row for row in rows if len(row) == 6]


def test_bench_smoke_run_measures_every_endpoint(tmp_path: Path) -> None:
    output_dir = tmp_path / "results"
    completed = subprocess.run(
        [
            str(ROOT / "bench" / "run"),
            "--smoke",
            "--no-install",
            "--output-dir",
            str(output_dir),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = completed.stdout + completed.stderr

    assert completed.returncode == 0, output[-6000:]
    reports = list(output_dir.glob("*-sqlite-smoke.md"))
    assert len(reports) == 1, output[-6000:]
    report = reports[0].read_text(encoding="utf-8")
    rows = _result_rows(report)
    for label in ENDPOINT_LABELS:
        matching = [row for row in rows if row[0].startswith(label)]
        assert len(matching) == 1, f"{label} missing from:\n{report}"
        assert matching[0][4] == "0", f"errors for {label}:\n{report}"
    assert "| Endpoint | rps median" in completed.stdout
