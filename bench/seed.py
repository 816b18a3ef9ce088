"""Seed realistic data fast, by direct inserts (no HTTP, one argon2id hash in all).

`python -m bench.seed PLAN.json OUT.json` runs with the service's environment
(its `DATABASE_URL`, already migrated) and writes what the runner needs to OUT:

- users: `users` accounts sharing one precomputed argon2id hash of the password;
  the first is the bench user (reads), the second the writer (creates, patches).
- items: `items` in all; the bench user owns exactly `bench_items` of them, the
  writer `writer_items`, the rest are spread at random over the other users,
  created over the past year.
- refresh tokens: `refresh_tokens` login sessions of the bench user, each with one
  unused refresh token (only its SHA-256 is stored), for the refresh runs.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings, get_settings
from app.core.scopes import ROLE_SCOPES, Role, format_scope
from app.core.security import PasswordHasher
from app.core.text import canonical_identity
from app.core.tokens import hash_refresh_token, new_refresh_token
from app.database import create_engine
from app.models import AuthSession, Item, RefreshToken, User

BATCH = 5000
FIRST_NAMES = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Edsger", "Frances"]
LAST_NAMES = ["Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Allen"]
WORDS = [
    *("quarterly", "report", "invoice", "draft", "design", "review", "budget"),
    *("roadmap", "meeting", "notes", "release", "checklist", "customer"),
    *("feedback", "migration", "plan", "incident", "summary"),
]
STATUSES = ["draft", "active", "archived"]


@dataclass(frozen=True)
class SeedPlan:
    """How much to seed."""

    users: int
    items: int
    bench_items: int
    writer_items: int
    refresh_tokens: int
    password: str
    seed: int = 7


@dataclass(frozen=True)
class Account:
    """A seeded user as the items need it."""

    id: int
    username: str
    display_name: str


def _user_rows(plan: SeedPlan, hashed: str, rng: random.Random) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    rows = []
    for index in range(plan.users):
        username = ("bench", "writer")[index] if index < 2 else f"user{index:05d}"
        created = now - timedelta(days=400, minutes=index)
        rows.append(
            {
                "email": f"{username}@bench.example.com",
                "email_canonical": canonical_identity(f"{username}@bench.example.com"),
                "username": username,
                "username_canonical": canonical_identity(username),
                "hashed_password": hashed,
                "first_name": rng.choice(FIRST_NAMES),
                "last_name": rng.choice(LAST_NAMES),
                "role": Role.USER.value,
                "is_active": True,
                "is_verified": True,
                "token_version": 0,
                "created_at": created,
                "updated_at": created,
            }
        )
    return rows


async def _insert_users(
    connection: AsyncConnection, plan: SeedPlan, hashed: str, rng: random.Random
) -> list[Account]:
    await connection.execute(insert(User), _user_rows(plan, hashed, rng))
    result = await connection.execute(
        select(User.id, User.username, User.first_name, User.last_name).order_by(
            User.id
        )
    )
    return [
        Account(id=row.id, username=row.username, display_name=f"{row[2]} {row[3]}")
        for row in result
    ]


def _item(
    owner: Account, created: datetime, number: int, rng: random.Random
) -> dict[str, Any]:
    words = " ".join(rng.choices(WORDS, k=3))
    updated = min(created + timedelta(hours=rng.randint(0, 24 * 30)), datetime.now(UTC))
    return {
        "title": f"{words.capitalize()} #{number}",
        "description": " ".join(rng.choices(WORDS, k=rng.randint(8, 30))),
        "status": rng.choice(STATUSES),
        "owner_id": owner.id,
        "created_by_id": owner.id,
        "created_by_name": owner.display_name,
        "updated_by_id": owner.id,
        "updated_by_name": owner.display_name,
        "created_at": created,
        "updated_at": updated,
        "version": 1,
    }


def _item_rows(
    plan: SeedPlan, accounts: list[Account], rng: random.Random
) -> Iterator[dict[str, Any]]:
    """Every item: the bench user's, the writer's, then the rest at random."""
    now = datetime.now(UTC)
    bench, writer, others = accounts[0], accounts[1], accounts[2:] or accounts[:2]
    for number in range(plan.bench_items):
        # Distinct timestamps, one every ~8 hours: a year of history.
        yield _item(bench, now - timedelta(minutes=500 * (number + 1)), number, rng)
    for number in range(plan.writer_items):
        yield _item(writer, now - timedelta(minutes=30 * (number + 1)), number, rng)
    rest = plan.items - plan.bench_items - plan.writer_items
    for number in range(max(0, rest)):
        created = now - timedelta(seconds=rng.randint(60, 365 * 86400))
        yield _item(rng.choice(others), created, number, rng)


async def _insert_items(
    connection: AsyncConnection,
    plan: SeedPlan,
    accounts: list[Account],
    rng: random.Random,
) -> list[int]:
    batch: list[dict[str, Any]] = []
    for row in _item_rows(plan, accounts, rng):
        batch.append(row)
        if len(batch) >= BATCH:
            await connection.execute(insert(Item), batch)
            batch = []
    if batch:
        await connection.execute(insert(Item), batch)
    writer_items = await connection.execute(
        select(Item.id).where(Item.owner_id == accounts[1].id).order_by(Item.id)
    )
    return list(writer_items.scalars())


async def _insert_refresh_tokens(
    connection: AsyncConnection, settings: Settings, user: Account, count: int
) -> list[str]:
    now = datetime.now(UTC)
    lifetime = timedelta(days=settings.REFRESH_TOKEN_ABSOLUTE_LIFETIME_DAYS)
    families = [uuid.uuid4().hex for _ in range(count)]
    tokens = [new_refresh_token() for _ in range(count)]
    scope = format_scope(ROLE_SCOPES[Role.USER])
    sessions = [
        {
            "id": family,
            "user_id": user.id,
            "scope": scope,
            "user_agent": "bench",
            "ip_address": "127.0.0.1",
            "created_at": now,
            "last_used_at": now,
            "expires_at": now + lifetime,
        }
        for family in families
    ]
    rows = [
        {
            "session_id": family,
            "token_hash": hash_refresh_token(token),
            "created_at": now,
        }
        for family, token in zip(families, tokens, strict=True)
    ]
    if count:
        await connection.execute(insert(AuthSession), sessions)
        await connection.execute(insert(RefreshToken), rows)
    return tokens


async def _analyze(connection: AsyncConnection, settings: Settings) -> None:
    """Planner statistics, as a long-running production database has them."""
    if settings.is_sqlite:
        await connection.execute(text("ANALYZE"))
    else:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE"))


async def seed(settings: Settings, plan: SeedPlan) -> dict[str, Any]:
    """Insert the plan's rows into the (migrated, empty) database.

    Args:
        settings: The service's settings (database URL, argon2id cost).
        plan: How many users, items and refresh tokens.

    Returns:
        Usernames, the writer's item ids and the refresh tokens, for the runner.
    """
    started = time.perf_counter()
    rng = random.Random(plan.seed)
    hashed = PasswordHasher(settings).hash_sync(plan.password)
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            accounts = await _insert_users(connection, plan, hashed, rng)
            writer_item_ids = await _insert_items(connection, plan, accounts, rng)
            tokens = await _insert_refresh_tokens(
                connection, settings, accounts[0], plan.refresh_tokens
            )
        async with engine.connect() as connection:
            await _analyze(connection, settings)
    finally:
        await engine.dispose()
    return {
        "bench_username": accounts[0].username,
        "writer_username": accounts[1].username,
        "usernames": [account.username for account in accounts[2:]]
        or [account.username for account in accounts],
        "writer_item_ids": writer_item_ids,
        "refresh_tokens": tokens,
        "plan": {**asdict(plan), "password": "***"},
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str]) -> int:
    """Seed from the plan file argv[0]; write the outcome to argv[1]."""
    plan = SeedPlan(**orjson.loads(Path(argv[0]).read_bytes()))
    outcome = asyncio.run(seed(get_settings(), plan))
    Path(argv[1]).write_bytes(orjson.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
