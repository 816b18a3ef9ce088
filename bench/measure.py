"""The measurement schedule: warm-up, then rounds of (ceiling, endpoint) pairs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import wrk
from bench.client import HealthProbe, ProbeResult
from bench.endpoints import CEILING, LOGIN_FLOOR, Endpoint, Fixture, RunShape
from bench.servers import run_python
from bench.spec import LoadSpec, RunResult


def with_floor(endpoints: list[Endpoint]) -> list[Endpoint]:
    """`endpoints` with the login floor right after login (when login is there)."""
    measured = []
    for endpoint in endpoints:
        measured.append(endpoint)
        if endpoint.key == "login":
            measured.append(LOGIN_FLOOR)
    return measured


class LoadGenerator:
    """Runs a `LoadSpec`: wrk when installed, else the Python generator."""

    def __init__(
        self, work: Path, env: dict[str, str], wrk_executable: str | None
    ) -> None:
        """Use wrk at `wrk_executable`, or the Python generator when None."""
        self.work = work
        self.env = env
        self.wrk = wrk_executable
        self.description = (
            f"{wrk.wrk_version(wrk_executable)} (1 thread)"
            if wrk_executable
            else "python load generator (bench/loadgen.py), not wrk: "
            "slower than wrk, it may cap the numbers"
        )
        self._runs = 0

    def run(self, spec: LoadSpec, key: str) -> RunResult:
        """Run `spec`; its script/spec file is kept in the work directory."""
        self._runs += 1
        stem = self.work / f"run-{self._runs:03d}-{key}"
        if self.wrk:
            return wrk.run(self.wrk, spec, stem.with_suffix(".lua"))
        spec_path = stem.with_suffix(".json")
        spec_path.write_bytes(orjson.dumps(spec.to_dict()))
        output = run_python("bench.loadgen", [str(spec_path)], self.env, self.work)
        return RunResult.from_dict(orjson.loads(output.strip().splitlines()[-1]))


@dataclass
class Series:
    """Every run of one endpoint."""

    endpoint: Endpoint
    runs: list[RunResult] = field(default_factory=list)
    warmups: list[RunResult] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # to the ceiling run beside it


@dataclass
class Measurements:
    """What a whole benchmark measured."""

    series: dict[str, Series]
    argon2_rates: list[float] = field(default_factory=list)
    argon2_info: dict[str, float] = field(default_factory=dict)
    probe: ProbeResult = field(default_factory=ProbeResult)

    @property
    def errors(self) -> int:
        """Errors over every run, warm-ups included."""
        return sum(
            run.errors
            for series in self.series.values()
            for run in [*series.runs, *series.warmups]
        )


@dataclass(frozen=True)
class Schedule:
    """How long and how often."""

    shape: RunShape
    warmup: float
    repeat: int


STARTED = time.monotonic()


def say(message: str) -> None:
    """Progress on stdout (seconds since start first), flushed at once."""
    sys.stdout.write(f"[{time.monotonic() - STARTED:5.1f}s] {message}\n")
    sys.stdout.flush()


def _describe(result: RunResult) -> str:
    text = (
        f"{result.rps:,.0f} rps, p50 {result.p50_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms, errors {result.errors}"
    )
    if result.errors:
        text += f" (statuses {result.statuses}, socket errors {result.socket_errors})"
    return text


def _ratio(result: RunResult, ceiling: RunResult) -> float:
    return result.rps / ceiling.rps if ceiling.rps else 0.0


class Benchmark:
    """Runs the schedule against the fixture and collects `Measurements`."""

    def __init__(
        self,
        fixture: Fixture,
        generator: LoadGenerator,
        argon2_rate: Callable[[float], dict[str, float]],
    ) -> None:
        """Bind to the servers' fixture, a load generator and the argon2id probe."""
        self.fixture = fixture
        self.generator = generator
        self.argon2_rate = argon2_rate

    def _run(self, endpoint: Endpoint, shape: RunShape) -> RunResult:
        spec = endpoint.build(self.fixture, shape)
        return self.generator.run(spec, endpoint.key)

    def warm_up(
        self, endpoints: list[Endpoint], schedule: Schedule, into: Measurements
    ) -> None:
        """One warm-up run of the ceiling and of every endpoint."""
        shape = RunShape(
            schedule.shape.connections, schedule.warmup, schedule.shape.timeout
        )
        for endpoint in [CEILING, *with_floor(endpoints)]:
            result = self._run(endpoint, shape)
            into.series[endpoint.key].warmups.append(result)
            say(f"  warm-up {endpoint.key}: {_describe(result)}")

    def _measure_login(
        self, endpoint: Endpoint, shape: RunShape, into: Measurements
    ) -> RunResult:
        """argon2id alone, login (with `/health` probed), then the login floor."""
        info = self.argon2_rate(shape.duration)
        into.argon2_rates.append(info["rate"])
        into.argon2_info = info
        say(f"  argon2id alone: {info['rate']:.1f} verifications/s")
        with HealthProbe(self.fixture.service_url) as probe:
            result = self._run(endpoint, shape)
        into.probe.latencies.extend(probe.result.latencies)
        into.probe.errors += probe.result.errors
        say(f"  /health during login: p99 {probe.result.p(0.99):.1f} ms")
        floor = self._run(LOGIN_FLOOR, shape)
        into.series[LOGIN_FLOOR.key].runs.append(floor)
        say(f"  {LOGIN_FLOOR.key}: {_describe(floor)}")
        return result

    def round(
        self,
        number: int,
        endpoints: list[Endpoint],
        schedule: Schedule,
        into: Measurements,
    ) -> None:
        """One round: for each endpoint, a ceiling run, then the endpoint's run."""
        say(f"round {number}/{schedule.repeat}")
        for endpoint in endpoints:
            ceiling = self._run(CEILING, schedule.shape)
            into.series[CEILING.key].runs.append(ceiling)
            if endpoint.key == "login":
                result = self._measure_login(endpoint, schedule.shape, into)
                floor = into.series[LOGIN_FLOOR.key]
                floor.ratios.append(_ratio(floor.runs[-1], ceiling))
            else:
                result = self._run(endpoint, schedule.shape)
            series = into.series[endpoint.key]
            series.runs.append(result)
            series.ratios.append(_ratio(result, ceiling))
            say(
                f"  {endpoint.key}: {_describe(result)}; "
                f"ceiling {ceiling.rps:,.0f} rps -> x{series.ratios[-1]:.3f}"
            )

    def measure(self, endpoints: list[Endpoint], schedule: Schedule) -> Measurements:
        """Warm up (when asked), then `repeat` rounds."""
        into = Measurements(
            series={
                endpoint.key: Series(endpoint)
                for endpoint in [CEILING, *with_floor(endpoints)]
            }
        )
        if schedule.warmup > 0:
            self.warm_up(endpoints, schedule, into)
        for number in range(1, schedule.repeat + 1):
            self.round(number, endpoints, schedule, into)
        return into
