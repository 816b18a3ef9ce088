"""Command line: `python -m app serve | migrate | create-superuser | worker | prune | openapi`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import orjson
import typer
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from app.backends import email_transport, redis_client
from app.core.config import Settings, get_settings
from app.core.exceptions import AppError
from app.core.logging import configure_logging
from app.core.security import PasswordHasher
from app.core.text import IdentityCollisionError
from app.database import Database, SchemaCheck, safe_url, upgrade_to_head
from app.schemas.user import SuperuserCreate
from app.services import accounts
from app.services.eventing import build_event_runtime, consumer_settings
from app.services.retention import Pruner
from app.services.worker import StreamConsumer

if TYPE_CHECKING:
    import uvicorn

cli = typer.Typer(
    help="Operate the FastAPI backend service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "settings"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def load_settings() -> Settings:
    """Load settings, turning a bad configuration into a clear exit-2 message."""
    try:
        return get_settings()
    except ValidationError as exc:
        _fail(f"invalid configuration: {_describe_validation(exc)}", code=2)


def _database_unreachable(settings: Settings, exc: BaseException) -> NoReturn:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    _fail(f"cannot use the database at {safe_url(settings.DATABASE_URL)}: {reason}")


async def _schema_problem(settings: Settings) -> str | None:
    database = Database(settings)
    try:
        async with asyncio.timeout(settings.READY_TIMEOUT_SECONDS):
            async with database.engine.connect() as connection:
                return await SchemaCheck().problem(connection)
    finally:
        await database.dispose()


def _warn_unless_migrated(settings: Settings) -> None:
    """Say at start when the schema is not at head: every request would fail."""
    where = safe_url(settings.DATABASE_URL)
    try:
        problem = asyncio.run(_schema_problem(settings))
    except (DBAPIError, OSError) as exc:  # OSError includes TimeoutError
        text = str(getattr(exc, "orig", None) or exc).strip().partition("\n")[0]
        reason = text or type(exc).__name__
        problem = f"cannot check its schema now ({reason})"
    if problem is not None:
        typer.secho(
            f"warning: database at {where}: {problem}; /ready answers 503 "
            "until the database answers at the migrations' head",
            err=True,
            fg=typer.colors.YELLOW,
        )


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    reload: Annotated[
        bool, typer.Option(help="Restart on code changes (dev).")
    ] = False,
) -> None:
    """Run the HTTP server (uvicorn, uvloop + httptools when installed)."""
    import uvicorn

    settings = load_settings()
    if reload and workers > 1:
        _fail("--reload and --workers > 1 cannot be combined", code=2)
    if workers > 1 and not settings.REDIS_URL:
        # Each process would cache access checks and count lockouts and rate
        # limits on its own: a logout or a lock in one would not hold in another.
        _fail(
            "--workers > 1 needs REDIS_URL, which every worker shares for "
            "revocations, lockouts and rate limits",
            code=2,
        )
    configure_logging(settings.LOG_LEVEL)
    _warn_unless_migrated(settings)
    config = uvicorn.Config(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        reload=reload,
        log_config=None,
        access_log=False,
        server_header=False,
        # The app reads the forwarded headers itself (ClientAddressMiddleware):
        # only there is the socket peer still known when a header is garbage.
        proxy_headers=False,
    )
    # Listen before saying so: a busy port is a clear error, never a banner
    # followed by uvicorn's bind failure.
    sock = _listen(host, port, config.backlog)
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    typer.echo(f"Serving {settings.PROJECT_NAME} on {base}")
    if settings.docs_enabled:
        typer.echo(f"API docs: {base}/docs  (ReDoc: {base}/redoc)")
    _run_uvicorn(config, sock)


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    """Bind and listen as uvicorn would, or exit 1 saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    sock.set_inheritable(True)  # --workers: every process accepts on it
    return sock


def _run_uvicorn(config: uvicorn.Config, sock: socket.socket) -> None:
    # What `uvicorn.run` does, on a socket that is already listening.
    import uvicorn
    from uvicorn.supervisors import ChangeReload, Multiprocess

    server = uvicorn.Server(config)
    if config.should_reload:
        ChangeReload(config, target=server.run, sockets=[sock]).run()
    elif config.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
        if not server.started:
            raise typer.Exit(3)  # uvicorn's STARTUP_FAILURE


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the latest migration."""
    settings = load_settings()
    try:
        upgrade_to_head(settings.DATABASE_URL)
    except (DBAPIError, OSError) as exc:
        _database_unreachable(settings, exc)
    except IdentityCollisionError as exc:  # the report, not a traceback
        _fail(str(exc))
    typer.echo(f"Database at {safe_url(settings.DATABASE_URL)} is up to date.")


def _read_password() -> str:
    password: str = typer.prompt(
        "Password", hide_input=True, confirmation_prompt="Repeat password"
    )
    return password


async def _create_superuser(settings: Settings, data: SuperuserCreate) -> int:
    database = Database(settings)
    try:
        async with database.sessionmaker() as session:
            user = await accounts.create_superuser(
                session,
                PasswordHasher(settings),
                email=data.email,
                username=data.username,
                password=data.password,
            )
            return user.id
    finally:
        await database.dispose()


@cli.command("create-superuser")
def create_superuser(
    email: Annotated[str | None, typer.Option(help="Email address.")] = None,
    username: Annotated[str | None, typer.Option(help="Username.")] = None,
    password: Annotated[
        str | None, typer.Option(help="Password; prompted (hidden) when omitted.")
    ] = None,
) -> None:
    """Create an admin account (prompts for whatever is missing)."""
    settings = load_settings()
    email = email or typer.prompt("Email")
    username = username or typer.prompt("Username")
    password = password or _read_password()
    try:
        data = SuperuserCreate(email=email, username=username, password=password)
    except ValidationError as exc:
        _fail(_describe_validation(exc), code=2)
    try:
        user_id = asyncio.run(_create_superuser(settings, data))
    except AppError as exc:
        _fail(exc.detail_message)
    except (DBAPIError, OSError) as exc:
        _database_unreachable(settings, exc)
    typer.echo(f"Created admin {data.username} <{data.email}> with id {user_id}.")


async def _run_worker(settings: Settings, name: str) -> None:
    database = Database(settings)
    redis = redis_client(settings)
    assert redis is not None
    runtime = build_event_runtime(
        settings, database.sessionmaker, email_transport(settings), redis
    )
    consumer = StreamConsumer(
        redis,
        runtime.dispatcher,
        consumer_settings(settings, name),
        database.sessionmaker,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runtime.stop.set)
    runtime.start_relay()
    runtime.start_consumer(consumer)
    if settings.PRUNE_INTERVAL_SECONDS:
        runtime.start_pruner(Pruner(database.sessionmaker, settings))
    typer.echo(f"Worker {name} consuming {consumer.settings.stream}")
    await runtime.stop.wait()
    await runtime.shutdown()
    await redis.aclose()
    await database.dispose()


@cli.command()
def worker(
    name: Annotated[
        str | None, typer.Option(help="Consumer name (default: host-pid).")
    ] = None,
) -> None:
    """Consume domain events from Redis (also relays the outbox)."""
    settings = load_settings()
    if not settings.REDIS_URL:
        _fail(
            "the worker needs REDIS_URL; without Redis the API process handles "
            "events itself",
            code=2,
        )
    configure_logging(settings.LOG_LEVEL)
    consumer = name or f"{socket.gethostname()}-{os.getpid()}"
    asyncio.run(_run_worker(settings, consumer))


async def _prune(settings: Settings) -> dict[str, int]:
    database = Database(settings)
    try:
        return await Pruner(database.sessionmaker, settings).prune()
    finally:
        await database.dispose()


@cli.command()
def prune() -> None:
    """Delete what ended more than the retention ago (one pass; e.g. from cron)."""
    settings = load_settings()
    try:
        deleted = asyncio.run(_prune(settings))
    except (DBAPIError, OSError) as exc:
        _database_unreachable(settings, exc)
    for table, count in deleted.items():
        typer.echo(f"{table}: {count} deleted")


@cli.command()
def openapi(
    output: Annotated[
        Path | None, typer.Option(help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print (or write) the OpenAPI document."""
    from app.main import create_app

    document = create_app(load_settings()).openapi()
    text = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
    if output is None:
        sys.stdout.write(text + "\n")
        return
    output.write_text(text + "\n", encoding="utf-8")
    typer.echo(f"Wrote {output}")
