"""The load benchmark: `bench/run [options]` (see bench/README.md).

Starts the service (production settings, one uvicorn worker, uvloop, httptools,
its JSON access log to a file) on a fresh, seeded database, and the bare-FastAPI
ceiling app the same way; measures every endpoint with the ceiling interleaved;
prints a Markdown table and writes it to `bench/results/<date>-<db>.md`.
Exit status: 0 when every request of every run got a 2xx answer, 1 when any
did not (or a socket error happened), 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import orjson

from bench import report, wrk
from bench.client import Client
from bench.endpoints import (
    ENDPOINT_KEYS,
    ENDPOINTS,
    Endpoint,
    Fixture,
    RunShape,
    missing_routes,
)
from bench.measure import Benchmark, LoadGenerator, Measurements, Schedule, say
from bench.servers import (
    ROOT,
    Database,
    Server,
    fresh_database,
    run_python,
    running,
    server_env,
)

BENCH = ROOT / "bench"
PASSWORD = "Bench-Passw0rd-2024"  # noqa: S105 - the seeded users' throwaway password
MAX_DURATION = 540
SMOKE = {
    "duration": 1,
    "warmup": 0,
    "repeat": 1,
    "users": 20,
    "items": 400,
    "bench_items": 300,
}


@dataclass(frozen=True)
class Options:
    """The command line, resolved."""

    db_url: str | None
    connections: int
    duration: int
    warmup: int
    repeat: int
    users: int
    items: int
    bench_items: int
    smoke: bool
    endpoints: list[str]
    load_generator: str
    install: bool
    output_dir: Path
    work_dir: Path
    overrides: dict[str, str]
    timeout: int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--db-url",
        help="postgresql+asyncpg://... server URL: benchmark on a fresh "
        "database created there (dropped afterwards). Default: a fresh SQLite file.",
    )
    add("--connections", type=int, default=32, help="concurrent connections (32)")
    add("--duration", type=int, help="seconds per measured run (10; smoke 1)")
    add("--warmup", type=int, help="seconds of warm-up per target (3; smoke 0)")
    add("--repeat", type=int, help="rounds (3; smoke 1)")
    add("--users", type=int, help="seeded users (1000; smoke 20)")
    add("--items", type=int, help="seeded items (100000; smoke 400)")
    add("--bench-items", type=int, help="items of the bench user (1000; smoke 300)")
    add("--smoke", action="store_true", help="seconds-long run with a tiny seed (CI)")
    add(
        "--endpoints",
        default=",".join(ENDPOINT_KEYS),
        help=f"comma-separated subset of: {', '.join(ENDPOINT_KEYS)}",
    )
    add(
        "--load-generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="auto: wrk when installed (installing it if possible), else Python",
    )
    add("--no-install", action="store_true", help="never apt-get install wrk")
    add(
        "--output-dir",
        type=Path,
        help="where the report goes (bench/results; smoke: bench/.work/results)",
    )
    add(
        "--work-dir",
        type=Path,
        help="database, server logs, scripts (bench/.work/<db>; emptied first)",
    )
    add(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra service setting (repeatable), e.g. --set DB_POOL_SIZE=20",
    )
    add("--timeout", type=int, default=10, help="request timeout in seconds (10)")
    return parser


def _pick(value: int | None, smoke: bool, key: str, default: int) -> int:
    if value is not None:
        return value
    return int(SMOKE[key]) if smoke else default


def parse_options(argv: list[str]) -> Options:
    """Resolve the command line into `Options` (exits 2 on a usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    endpoints = [key.strip() for key in args.endpoints.split(",") if key.strip()]
    unknown = sorted(set(endpoints) - set(ENDPOINT_KEYS))
    if unknown:
        parser.error(f"unknown endpoints: {', '.join(unknown)}")
    if args.duration is not None and not 1 <= args.duration <= MAX_DURATION:
        # Runs reuse an access token for up to 5 minutes; tokens live 15 by default.
        parser.error(f"--duration must be between 1 and {MAX_DURATION} seconds")
    if args.connections < 1 or (args.repeat is not None and args.repeat < 1):
        parser.error("--connections and --repeat must be at least 1")
    if args.db_url and not args.db_url.startswith("postgresql+asyncpg://"):
        parser.error("--db-url must start with postgresql+asyncpg://")
    overrides = dict(item.split("=", 1) for item in args.set if "=" in item)
    kind = "postgresql" if args.db_url else "sqlite"
    default_output = BENCH / (".work/results" if args.smoke else "results")
    return Options(
        db_url=args.db_url,
        connections=args.connections,
        duration=_pick(args.duration, args.smoke, "duration", 10),
        warmup=_pick(args.warmup, args.smoke, "warmup", 3),
        repeat=_pick(args.repeat, args.smoke, "repeat", 3),
        users=max(3, _pick(args.users, args.smoke, "users", 1000)),
        items=_pick(args.items, args.smoke, "items", 100_000),
        bench_items=_pick(args.bench_items, args.smoke, "bench_items", 1000),
        smoke=args.smoke,
        endpoints=[key for key in ENDPOINT_KEYS if key in endpoints],
        load_generator=args.load_generator,
        install=not args.no_install,
        output_dir=(args.output_dir or default_output).resolve(),
        work_dir=(args.work_dir or BENCH / ".work" / kind).resolve(),
        overrides=overrides,
        timeout=args.timeout,
    )


def _apt_get(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    completed = subprocess.run(  # noqa: S603 - fixed argv
        ["apt-get", *args],  # noqa: S607
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.returncode == 0


def ensure_wrk(options: Options) -> str | None:
    """wrk's path: installed from the Debian packages when missing and possible."""
    if options.load_generator == "python":
        return None
    found = wrk.wrk_path()
    can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if found is None and options.install and can_install:
        say("wrk is not installed: apt-get install -y wrk")
        if not _apt_get("install", "-y", "-q", "wrk"):
            _apt_get("update", "-q")
            _apt_get("install", "-y", "-q", "wrk")
        found = wrk.wrk_path()
    if found is None and options.load_generator == "wrk":
        raise RuntimeError("wrk is required (--load-generator wrk) but not installed")
    if found is None:
        say(
            "NOTE: wrk is not available, so the Python load generator is used "
            "(bench/loadgen.py). It is slower than wrk: numbers may be capped by it."
        )
    return found


def _prepare_work_dir(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    patterns = ("bench.db*", "service.log", "ceiling.log", "run-*.*", "seed-*.json")
    for pattern in patterns:
        for path in work.glob(pattern):
            path.unlink()


def _seed(options: Options, env: dict[str, str], work: Path) -> dict[str, Any]:
    runs = options.repeat + (1 if options.warmup > 0 else 0)
    plan = {  # bench/seed.py's SeedPlan
        "users": options.users,
        "items": options.items,
        "bench_items": min(options.bench_items, options.items),
        "writer_items": 2 * options.connections,
        "refresh_tokens": 2 * options.connections * runs,
        "password": PASSWORD,
    }
    plan_path, out_path = work / "seed-plan.json", work / "seed-out.json"
    plan_path.write_bytes(orjson.dumps(plan))
    run_python("bench.seed", [str(plan_path), str(out_path)], env, work)
    seeded: dict[str, Any] = orjson.loads(out_path.read_bytes())
    return seeded


def _argon2_probe(
    env: dict[str, str], work: Path, connections: int
) -> Callable[[float], dict[str, float]]:
    def measure(seconds: float) -> dict[str, float]:
        output = run_python(
            "bench.argon2_rate", [str(seconds), str(connections)], env, work
        )
        data: dict[str, float] = orjson.loads(output.strip().splitlines()[-1])
        return data

    return measure


def _check_routes(service: Server, endpoints: list[Endpoint]) -> None:
    openapi = Client(service.base_url).expect("GET", "/api/v1/openapi.json").json()
    assert isinstance(openapi, dict)
    missing = missing_routes(openapi, endpoints)
    if missing:
        raise RuntimeError(
            f"the service has no route for: {', '.join(missing)}; "
            "leave them out with --endpoints"
        )


@dataclass
class Outcome:
    """What `execute` hands to the report."""

    measurements: Measurements
    database: Database
    generator: str
    servers: list[str]
    seed: str


def _seed_summary(seeded: dict[str, Any]) -> str:
    plan = seeded["plan"]
    return (
        f"{plan['users']:,} users sharing one argon2id hash, {plan['items']:,} items "
        f"(bench user: {plan['bench_items']:,}; writer: {plan['writer_items']:,}; the rest "
        f"spread at random), {plan['refresh_tokens']:,} one-time refresh tokens; "
        f"seeded by direct inserts in {seeded['seconds']} s"
    )


def execute(options: Options, work: Path) -> Outcome:
    """Set everything up, measure, tear everything down."""
    wrk_executable = ensure_wrk(options)
    endpoints = [
        endpoint for endpoint in ENDPOINTS if endpoint.key in options.endpoints
    ]
    with ExitStack() as stack:
        database = stack.enter_context(fresh_database(options.db_url, work))
        say(f"database: {database.description}")
        env = server_env(database.url, secrets.token_urlsafe(48), options.overrides)
        # The ceiling needs no database: it starts while the database is prepared.
        ceiling = stack.enter_context(
            running(
                Server("ceiling", "bench.ceiling:create_app", env, work), wait=False
            )
        )
        say("migrating (python -m app migrate), then seeding")
        run_python("app", ["migrate"], env, work)
        seeded = _seed(options, env, work)
        say(f"seeded in {seeded['seconds']} s")
        service = stack.enter_context(
            running(Server("service", "app.main:create_app", env, work))
        )
        ceiling.wait_ready()
        say(
            f"service on {service.base_url} (log {service.log_path}); ceiling on {ceiling.base_url}"
        )
        _check_routes(service, endpoints)
        fixture = Fixture(service.base_url, ceiling.base_url, seeded, PASSWORD)
        generator = LoadGenerator(work, env, wrk_executable)
        say(f"load generator: {generator.description}")
        benchmark = Benchmark(
            fixture, generator, _argon2_probe(env, work, options.connections)
        )
        schedule = Schedule(
            RunShape(options.connections, options.duration, options.timeout),
            options.warmup,
            options.repeat,
        )
        measurements = benchmark.measure(endpoints, schedule)
        return Outcome(
            measurements,
            database,
            generator.description,
            [service.command, ceiling.command],
            _seed_summary(seeded),
        )


def _settings_lines(options: Options) -> list[str]:
    base = [
        "ENVIRONMENT=production",
        "SECRET_KEY=<random 48 bytes>",
        "RATE_LIMIT_ENABLED=false",
        "METRICS_TOKEN=<the secret key>, DOCS_ENABLED=true",
        "LOG_LEVEL=INFO (JSON access log to the server log file)",
        "every other setting at its default",
    ]
    return base + [f"{name}={value}" for name, value in options.overrides.items()]


def write_report(options: Options, outcome: Outcome, argv: list[str]) -> Path:
    """Render the report, print it, and write it to the output directory."""
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    context = report.Context(
        date=date,
        command=" ".join(["bench/run", *map(shlex.quote, argv)]),
        database=outcome.database.description,
        generator=outcome.generator,
        connections=options.connections,
        duration=options.duration,
        warmup=options.warmup,
        repeat=options.repeat,
        seed=outcome.seed,
        servers=outcome.servers,
        settings=_settings_lines(options),
        smoke=options.smoke,
    )
    text = report.render(outcome.measurements, context)
    options.output_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-smoke" if options.smoke else ""
    path = options.output_dir / f"{date}-{outcome.database.kind}{suffix}.md"
    path.write_text(text, encoding="utf-8")
    sys.stdout.write("\n" + text + "\n")
    say(f"written to {path}")
    return path


def _terminate(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _terminate)
    work = options.work_dir
    _prepare_work_dir(work)
    started = time.monotonic()
    try:
        outcome = execute(options, work)
    except (RuntimeError, OSError) as exc:
        say(f"error: {exc}")
        say(f"logs: {work}")
        return 2
    except KeyboardInterrupt:
        say("interrupted: servers stopped, database removed")
        return 130
    write_report(options, outcome, argv)
    errors = outcome.measurements.errors
    say(f"done in {time.monotonic() - started:.0f} s")
    if errors:
        say(
            f"FAILED: {errors} error(s) (non-2xx answers or socket errors); logs in {work}"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
