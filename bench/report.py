"""The Markdown report: results table, targets, and how the numbers were made."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.measure import Measurements, Series
from bench.servers import ROOT
from bench.spec import RunResult

TIMES = "\u00d7"  # multiplication sign
DASH = "\u2013"  # en dash
PACKAGES = [
    "fastapi",
    "starlette",
    "pydantic",
    "sqlalchemy",
    "uvicorn",
    "uvloop",
    "httptools",
    "aiosqlite",
    "asyncpg",
    "pyjwt",
    "argon2-cffi",
    "orjson",
]


@dataclass(frozen=True)
class Context:
    """Everything the report says about how the run was made."""

    date: str
    command: str
    database: str
    generator: str
    connections: int
    duration: float
    warmup: float
    repeat: int
    seed: str
    servers: list[str]
    settings: list[str]
    smoke: bool


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _rps_cell(runs: list[RunResult]) -> str:
    rates = [run.rps for run in runs]
    if not rates:
        return "n/a"
    return f"{_median(rates):,.0f} [{min(rates):,.0f}{DASH}{max(rates):,.0f}]"


def _errors(series: Series) -> int:
    return sum(run.errors for run in [*series.runs, *series.warmups])


def _row(series: Series, is_ceiling: bool) -> str:
    runs = series.runs
    ratio = "1.000" if is_ceiling else f"{_median(series.ratios):.3f}"
    p50 = _median([run.p50_ms for run in runs])
    p99 = _median([run.p99_ms for run in runs])
    return (
        f"| {series.endpoint.label} | {_rps_cell(runs)} | {p50:.1f} | {p99:.1f} "
        f"| {_errors(series)} | {ratio} |"
    )


def table(measurements: Measurements) -> str:
    """The results table, ceiling first."""
    lines = [
        f"| Endpoint | rps median [min{DASH}max] | p50 ms | p99 ms | errors | {TIMES} ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, series in measurements.series.items():
        lines.append(_row(series, is_ceiling=key == "ceiling"))
    return "\n".join(lines)


def _median_rps(measurements: Measurements, key: str) -> float | None:
    series = measurements.series.get(key)
    if series is None or not series.runs:
        return None
    return _median([run.rps for run in series.runs])


def _floor_note(measurements: Measurements, login: float, argon2: float) -> list[str]:
    floor = _median_rps(measurements, "login-floor")
    if not floor:
        return []
    return [
        f"- Login floor (the ceiling app's `POST /login-floor`: the same form, the same "
        f"hasher and pool, a signed JWT, nothing else): {floor:,.1f} rps = "
        f"{floor / argon2:.2f} {TIMES} argon2id alone; login = **{login / floor:.2f} "
        f"{TIMES}** the floor. The rest of login's cost is the service's own: its "
        f"database read and write, middleware, access log."
    ]


def login_notes(measurements: Measurements) -> list[str]:
    """Login against the bare argon2id rate, and `/health` while logins run."""
    login = _median_rps(measurements, "login")
    if login is None or not measurements.argon2_rates:
        return []
    rates = measurements.argon2_rates
    info = measurements.argon2_info
    probe = measurements.probe
    return [
        f"- Login: {login:,.1f} rps = **{login / _median(rates):.2f} {TIMES}** the rate at "
        f"which one process verifies the configured argon2id hash alone: "
        f"{_median(rates):,.1f}/s [{min(rates):,.1f}{DASH}{max(rates):,.1f}] "
        f"(app `PasswordHasher`, m={info['memory_kib']:g} KiB, t={info['time_cost']:g}, "
        f"p={info['parallelism']:g}, {info['threads']:g} threads).",
        *_floor_note(measurements, login, _median(rates)),
        f"- `/health` while the login runs were in flight: p50 {probe.p(0.5):.1f} ms, "
        f"**p99 {probe.p(0.99):.1f} ms** ({len(probe.latencies):,} probes, "
        f"{probe.errors} errors; one keep-alive connection, every 20 ms).",
    ]


def _ratio(measurements: Measurements, key: str) -> float | None:
    series = measurements.series.get(key)
    return _median(series.ratios) if series and series.ratios else None


def _p99(measurements: Measurements, key: str) -> float:
    return _median([run.p99_ms for run in measurements.series[key].runs])


def _target(name: str, measured: str, met: bool) -> str:
    return f"| {name} | {measured} | {'yes' if met else '**no**'} |"


def targets(measurements: Measurements) -> list[str]:
    """Issue 7's targets that this run can judge."""
    rows = []
    me = _ratio(measurements, "me")
    if me is not None:
        p99 = _p99(measurements, "me")
        rows.append(
            _target(
                f"`GET /users/me` ≥ 0.6 {TIMES} ceiling, p99 < 50 ms",
                f"{me:.3f} {TIMES}, p99 {p99:.1f} ms",
                me >= 0.6 and p99 < 50,
            )
        )
    first = _ratio(measurements, "items-list")
    if first is not None:
        rows.append(
            _target(
                f"`GET /items?limit=100` ≥ 0.15 {TIMES} ceiling",
                f"{first:.3f} {TIMES}",
                first >= 0.15,
            )
        )
    first_rps = _median_rps(measurements, "items-list")
    deep_rps = _median_rps(measurements, "items-deep")
    if first_rps and deep_rps:
        slower = first_rps / deep_rps
        rows.append(
            _target(
                f"deep page time ≤ 1.2 {TIMES} first page time",
                f"{slower:.2f} {TIMES} (mean time at equal concurrency)",
                slower <= 1.2,
            )
        )
    create = _ratio(measurements, "items-create")
    if create is not None:
        rows.append(
            _target(
                f"`POST /items` ≥ 0.25 {TIMES} ceiling",
                f"{create:.3f} {TIMES}",
                create >= 0.25,
            )
        )
    login = _median_rps(measurements, "login")
    if login is not None and measurements.argon2_rates:
        share = login / _median(measurements.argon2_rates)
        rows.append(
            _target(
                f"`POST /auth/login` ≥ 0.9 {TIMES} argon2id rate",
                f"{share:.3f} {TIMES}",
                share >= 0.9,
            )
        )
    if not rows:
        return []
    return ["| Target (issue 7) | Measured | Met |", "|---|---|---|", *rows]


def _versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _git_commit() -> str:
    try:
        commit = subprocess.run(  # noqa: S603
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603
            [  # noqa: S607
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--",
                "app",
                "migrations",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (
        " (with uncommitted changes in app/ or migrations/)" if dirty else ""
    )


def setup_lines(context: Context) -> list[str]:
    """How the numbers were made, for whoever reproduces them."""
    return [
        f"- Command: `{context.command}`",
        f"- Machine: {os.cpu_count()} CPUs ({_cpu_model()}), {platform.platform()}",
        f"- Python {platform.python_version()}; {_versions()}",
        f"- Commit: {_git_commit()}",
        f"- Database: {context.database}",
        f"- Load generator: {context.generator}",
        f"- Load: {context.connections} connections (closed loop, keep-alive), "
        f"{context.duration:g} s per run after a {context.warmup:g} s warm-up of every "
        f"target, {context.repeat} round(s); in every round the ceiling runs right "
        "before each endpoint, and each ratio is endpoint ÷ that ceiling run "
        "(median over rounds).",
        f"- Data: {context.seed}",
        *[f"- Server: `{command}`" for command in context.servers],
        f"- Settings: {', '.join(context.settings)}",
        "- Errors: non-2xx answers plus socket errors, warm-ups included; "
        "any error fails the command.",
    ]


def _raw_runs(measurements: Measurements) -> list[str]:
    lines = ["| Endpoint | runs: rps / p50 ms / p99 ms |", "|---|---|"]
    for series in measurements.series.values():
        runs = "; ".join(
            f"{run.rps:,.0f} / {run.p50_ms:.1f} / {run.p99_ms:.1f}"
            for run in series.runs
        )
        lines.append(f"| {series.endpoint.key} | {runs} |")
    return lines


def error_lines(measurements: Measurements) -> list[str]:
    """Every run that had errors: its answers by status and its socket errors."""
    lines = []
    for series in measurements.series.values():
        runs = [("warm-up", run) for run in series.warmups] + [
            (f"round {number}", run) for number, run in enumerate(series.runs, 1)
        ]
        lines += [
            f"- {series.endpoint.key}, {name}: statuses {run.statuses}, "
            f"socket errors {run.socket_errors or {}}"
            for name, run in runs
            if run.errors
        ]
    return ["## Errors", "", *lines, ""] if lines else []


def render(measurements: Measurements, context: Context) -> str:
    """The whole Markdown report."""
    title = "Load benchmark" + (
        " (smoke run: numbers mean nothing)" if context.smoke else ""
    )
    database = context.database.split(" ", 1)[0]
    parts = [
        f"# {title}: {context.date}, {database}",
        "",
        "Paths are under `/api/v1` except the ceiling's.",
        "",
        table(measurements),
        "",
        *login_notes(measurements),
        "",
        *targets(measurements),
        "",
        *error_lines(measurements),
        "## Setup",
        "",
        *setup_lines(context),
        "",
        "## Every run",
        "",
        *_raw_runs(measurements),
    ]
    return "\n".join(parts).replace("\n\n\n", "\n\n") + "\n"
