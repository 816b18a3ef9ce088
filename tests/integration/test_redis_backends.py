"""Redis-backed platform: event stream + worker, shared limits, lockouts and cache."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis
from sqlalchemy import text

from app.core.attempts import ATTEMPT_LEASE_SECONDS, RedisLoginAttemptStore, Verdict
from app.core.email import EmailUnavailableError
from app.core.events import Event, RedisStreamPublisher
from app.main import create_app
from app.models.base import utcnow
from app.services import events
from app.services.eventing import consumer_settings
from app.services.handlers import Handler
from app.services.login_guard import LoginGuard
from app.services.relay import OutboxRelay
from app.services.worker import StreamConsumer
from tests.conftest import (
    DEFAULT_PASSWORD,
    TEST_REDIS_URL,
    bearer,
    login,
    make_settings,
    make_user,
    truncate_all,
)
from tests.helpers import MailSink, mail_sink

pytestmark = pytest.mark.skipif(TEST_REDIS_URL is None, reason="TEST_REDIS_URL not set")


@pytest.fixture
def sink() -> Iterator[MailSink]:
    with mail_sink() as running:
        yield running


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A private key prefix; every key under it is deleted afterwards."""
    name = f"test:{uuid.uuid4().hex[:10]}:"
    yield name
    redis = Redis.from_url(str(TEST_REDIS_URL))
    keys = [key async for key in redis.scan_iter(f"{name}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


AppFactory = Callable[..., Any]
LOGIN = "/api/v1/auth/login"
RESET_REQUEST = "/api/v1/auth/password-reset/request"


@pytest.fixture
async def make_app(
    database_url: str, prefix: str, sink: MailSink, tmp_path: Any
) -> AsyncIterator[AppFactory]:
    """Build apps sharing one Redis prefix (as several API processes would)."""
    apps: list[Any] = []

    def build(**overrides: Any) -> Any:
        values: dict[str, Any] = {
            "DATABASE_URL": database_url,
            "REDIS_URL": TEST_REDIS_URL,
            "REDIS_KEY_PREFIX": prefix,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": sink.port,
            "SMTP_TLS": False,
            "STORAGE_DIR": str(tmp_path),
            "EVENT_MAX_DELIVERIES": 2,
            "EVENT_RETRY_BASE_SECONDS": 0.01,
            "EVENT_HANDLER_TIMEOUT_SECONDS": 0.2,
        }
        values.update(overrides)
        app = create_app(make_settings(**values))
        apps.append(app)
        return app

    first = build()
    await truncate_all(first.state.database.engine)
    yield build
    for app in apps:
        if app.state.redis is not None:
            await app.state.redis.aclose()
        await app.state.database.dispose()


@asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=app, client=("192.0.2.50", 1234))
    async with AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


def consumer(app: Any, name: str = "c1") -> StreamConsumer:
    settings = app.state.settings
    return StreamConsumer(
        app.state.redis,
        app.state.events.dispatcher,
        consumer_settings(settings, name),
        app.state.database.sessionmaker,
    )


# A real SMTP exchange on a busy two-core machine can outlast the fixture's
# 0.2 s handler timeout (kept short for the retry tests): give mail time.
MAIL_HANDLER_TIMEOUT = 10


async def test_events_flow_through_the_stream_to_the_worker(
    make_app: AppFactory, sink: MailSink
) -> None:
    app = make_app(EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT)
    await make_user(app, "streamer")
    worker = consumer(app)
    await worker.ensure_group()

    assert await app.state.events.relay.publish_pending() == 1
    assert sink.messages == []  # nothing is handled in the API process
    handled = await worker.process_once()

    assert handled == 1
    assert [m["To"] for m in sink.messages] == ["streamer@example.com"]
    stream = worker.settings.stream
    pending = await app.state.redis.xpending(stream, worker.settings.group)
    assert pending["pending"] == 0  # acknowledged


async def test_duplicate_stream_entries_send_one_email(
    make_app: AppFactory, sink: MailSink
) -> None:
    app = make_app(EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT)
    await make_user(app, "dupe")
    worker = consumer(app)
    await worker.ensure_group()
    await app.state.events.relay.publish_pending()
    [(_, fields)] = await app.state.redis.xrange(worker.settings.stream)
    await app.state.redis.xadd(worker.settings.stream, fields)  # re-published

    await worker.process_once()
    await worker.process_once()

    assert len(sink.messages) == 1


async def test_two_workers_never_handle_one_entry_twice(make_app: AppFactory) -> None:
    app = make_app(EVENT_HANDLER_TIMEOUT_SECONDS=1.0)
    handled: Counter[str] = Counter()

    async def slow(event: Event) -> None:
        await asyncio.sleep(0.6)  # a slow mail server: under the timeout
        handled[event.aggregate_id] += 1

    app.state.events.dispatcher.handlers["user.created"] = [
        Handler("slow", app.state.database.sessionmaker, slow)
    ]
    for index in range(6):
        await make_user(app, f"user{index}")
    first, second = consumer(app, "c1"), consumer(app, "c2")
    await first.ensure_group()
    while await app.state.events.relay.publish_pending():
        pass
    stop = asyncio.Event()

    async def work(worker: StreamConsumer) -> None:
        while not stop.is_set():
            await worker.process_once()

    running = [asyncio.create_task(work(w)) for w in (first, second)]
    for _ in range(100):
        if len(handled) == 6:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # time enough for an entry to be taken over twice
    stop.set()
    await asyncio.gather(*running)

    # An entry waiting behind others in one worker's hands went idle past the
    # handler timeout, and the other worker took it over and handled it too.
    assert len(handled) == 6
    assert set(handled.values()) == {1}


async def test_a_mail_outage_keeps_the_entry_until_the_server_is_back(
    make_app: AppFactory,
) -> None:
    app = make_app()  # two deliveries at most, 0.2 s handler timeout
    sent: list[str] = []
    server_up = False

    async def mail(event: Event) -> None:
        if not server_up:
            raise EmailUnavailableError("connection refused")
        sent.append(event.aggregate_id)

    app.state.events.dispatcher.handlers["user.created"] = [
        Handler("mail", app.state.database.sessionmaker, mail)
    ]
    user = await make_user(app, "patient")
    worker = consumer(app)
    await worker.ensure_group()
    await app.state.events.relay.publish_pending()
    for _ in range(12):  # several times the deliveries a failing entry gets
        await worker.process_once()
        await asyncio.sleep(0.25)
    dead = await app.state.redis.xrange(worker.settings.dead_letter_stream)
    server_up = True
    for _ in range(20):
        await worker.process_once()
        if sent:
            break
        await asyncio.sleep(0.25)

    assert dead == []  # an outage is waited out, not dead-lettered
    assert sent == [str(user.id)]


async def test_a_handler_that_always_fails_ends_in_the_dead_letter_stream(
    make_app: AppFactory,
) -> None:
    app = make_app()

    async def always_fails(event: Event) -> None:
        raise RuntimeError("cannot handle this")

    app.state.events.dispatcher.handlers["user.created"] = [
        Handler("always_fails", app.state.database.sessionmaker, always_fails)
    ]
    await make_user(app, "doomed")
    worker = consumer(app)
    await worker.ensure_group()
    await app.state.events.relay.publish_pending()

    for _ in range(20):
        await worker.process_once()
        dead = await app.state.redis.xrange(worker.settings.dead_letter_stream)
        if dead:
            break
        await asyncio.sleep(0.1)

    [(_, entry)] = dead
    assert entry["event_type"] == "user.created"
    assert "cannot handle this" in entry["error"]
    assert entry["deliveries"] == "2"
    pending = await app.state.redis.xpending(
        worker.settings.stream, worker.settings.group
    )
    assert pending["pending"] == 0
    # Given up: done, so the relay never publishes it again.
    [row] = await outbox_rows(app)
    assert row["done_at"] is not None
    assert "dead-lettered: RuntimeError: cannot handle this" in row["last_error"]


async def test_rate_limits_are_shared_between_processes(make_app: AppFactory) -> None:
    first = make_app(RATE_LIMIT_ENABLED=True, RATE_LIMIT_AUTH="3/minute")
    second = make_app(RATE_LIMIT_ENABLED=True, RATE_LIMIT_AUTH="3/minute")
    await make_user(first, "limited")
    form = {"username": "limited", "password": DEFAULT_PASSWORD}
    async with client_for(first) as a, client_for(second) as b:
        responses = [
            await a.post("/api/v1/auth/login", data=form),
            await b.post("/api/v1/auth/login", data=form),
            await a.post("/api/v1/auth/login", data=form),
            await b.post("/api/v1/auth/login", data=form),
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    refused = responses[-1]
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "3"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert responses[0].headers["ratelimit-remaining"] == "2"


async def test_lockouts_are_shared_between_processes(make_app: AppFactory) -> None:
    first, second = make_app(), make_app()
    await make_user(first, "target")
    async with client_for(first) as a, client_for(second) as b:
        for index in range(5):
            client = a if index % 2 else b
            await client.post(
                "/api/v1/auth/login", data={"username": "target", "password": "Wrong-1"}
            )
        locked = await a.post(
            "/api/v1/auth/login",
            data={"username": "target", "password": DEFAULT_PASSWORD},
        )
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "ACCOUNT_LOCKED"


async def test_concurrent_guesses_across_processes_share_one_allowance(
    make_app: AppFactory,
) -> None:
    first, second = make_app(), make_app()
    await make_user(first, "target")
    allowed = first.state.settings.LOGIN_MAX_FAILURES
    async with client_for(first) as a, client_for(second) as b:
        answers = await asyncio.gather(
            *(
                (a if index % 2 else b).post(
                    "/api/v1/auth/login",
                    data={"username": "target", "password": f"Wrong-{index}"},
                )
                for index in range(12)
            )
        )
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(401) == allowed
    assert statuses.count(429) == 12 - allowed


async def test_concurrent_right_passwords_across_processes_lock_nothing(
    make_app: AppFactory,
) -> None:
    first, second = make_app(), make_app()
    await make_user(first, "target")
    form = {"username": "target", "password": DEFAULT_PASSWORD}
    async with client_for(first) as a, client_for(second) as b:
        answers = await asyncio.gather(
            *((a if index % 2 else b).post(LOGIN, data=form) for index in range(10))
        )
        after = await a.post(LOGIN, data=form)
    codes = [
        answer.json()["error"]["code"]
        for answer in answers
        if answer.status_code != 200
    ]
    assert set(codes) <= {"RATE_LIMITED"}, codes  # retry soon, never ACCOUNT_LOCKED
    assert len(codes) <= 10 - first.state.settings.LOGIN_MAX_FAILURES
    assert after.status_code == 200


async def test_a_slot_held_by_a_dead_process_frees_itself(
    make_app: AppFactory, prefix: str
) -> None:
    app = make_app()
    store = RedisLoginAttemptStore(app.state.redis, prefix)
    policy = LoginGuard(store, app.state.settings).policy
    now = 1_000_000.0
    for index in range(policy.max_failures):  # admitted, then never ended
        admission = await store.begin_attempt("user:1", f"dead{index}", now, policy)
        assert admission.verdict is Verdict.ADMITTED

    busy = await store.begin_attempt("user:1", "next", now + 1, policy)
    later = now + ATTEMPT_LEASE_SECONDS + 1
    freed = await store.begin_attempt("user:1", "next", later, policy)

    assert busy.verdict is Verdict.BUSY
    assert freed.verdict is Verdict.ADMITTED
    assert (await store.get("user:1", later)).failures == 0  # none was a failure


async def test_reset_emails_are_limited_across_processes(
    make_app: AppFactory, sink: MailSink
) -> None:
    first = make_app(EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT)
    second = make_app(EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT)
    await make_user(first, "target")
    body = {"email": "target@example.com"}
    async with client_for(first) as a, client_for(second) as b:
        answers = await asyncio.gather(
            *(
                (a if index % 2 else b).post(RESET_REQUEST, json=body)
                for index in range(10)
            )
        )
    worker = consumer(first)
    await worker.ensure_group()
    while await first.state.events.relay.publish_pending():
        pass
    while await worker.process_once():
        pass

    assert [answer.status_code for answer in answers] == [202] * 10
    resets = [m for m in sink.to("target@example.com") if "Reset" in m["Subject"]]
    assert len(resets) == 3, [m["Subject"] for m in sink.messages]


async def test_reset_emails_stay_limited_while_redis_is_down(
    make_app: AppFactory,
) -> None:
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    await make_user(app, "target")
    async with client_for(app) as http:
        for _ in range(10):
            answer = await http.post(
                RESET_REQUEST, json={"email": "target@example.com"}
            )
            assert answer.status_code == 202
    async with app.state.database.engine.connect() as connection:
        queued = await connection.execute(
            text(
                "SELECT count(*) FROM outbox_events"
                " WHERE event_type = 'user.password_reset_requested'"
            )
        )
        assert queued.scalar_one() == 3  # counted in this process instead


async def test_lockout_keys_outlive_a_long_window_and_lock(
    make_app: AppFactory, prefix: str
) -> None:
    app = make_app(LOGIN_FAILURE_WINDOW_SECONDS=7200, LOGIN_LOCKOUT_MAX_SECONDS=5400)
    await make_user(app, "target")
    async with client_for(app) as http:
        await http.post(
            "/api/v1/auth/login", data={"username": "target", "password": "Wrong-1"}
        )
    redis = app.state.redis
    keys = [key async for key in redis.scan_iter(f"{prefix}login:*")]
    ttls = [await redis.ttl(key) for key in keys]
    # Not the old fixed hour: a lock or window longer than that was forgotten early.
    assert len(ttls) == 2  # the account's counter and the address's
    assert all(ttl > 3600 for ttl in ttls), ttls


async def test_a_logout_is_honoured_by_every_process_at_once(
    make_app: AppFactory,
) -> None:
    first, second = make_app(), make_app()
    await make_user(first, "roamer")
    async with client_for(first) as a, client_for(second) as b:
        tokens = await login(a, "roamer")
        headers = bearer(tokens["access_token"])
        assert (
            await b.get("/api/v1/users/me", headers=headers)
        ).status_code == 200  # cached
        assert (await a.post("/api/v1/auth/logout", headers=headers)).status_code == 204
        assert (await b.get("/api/v1/users/me", headers=headers)).status_code == 401


async def test_redis_down_fails_open_for_limits_but_not_for_lockouts(
    make_app: AppFactory,
) -> None:
    down = "redis://127.0.0.1:1/0"
    app = make_app(REDIS_URL=down, RATE_LIMIT_ENABLED=True, RATE_LIMIT_AUTH="2/minute")
    await make_user(app, "resilient")
    async with client_for(app) as http:
        ok = [await login(http, "resilient") for _ in range(3)]  # limiter fails open
        me = await http.get("/api/v1/users/me", headers=bearer(ok[-1]["access_token"]))
        for _ in range(5):
            await http.post(
                "/api/v1/auth/login",
                data={"username": "resilient", "password": "Wrong-1"},
            )
        locked = await http.post(
            "/api/v1/auth/login",
            data={"username": "resilient", "password": DEFAULT_PASSWORD},
        )
        ready = await http.get("/ready")
    assert me.status_code == 200  # the cache falls back to the database
    assert locked.status_code == 429  # counted in this process instead
    assert ready.status_code == 200  # still in rotation: it serves, degraded
    assert ready.json()["status"] == "degraded"
    assert ready.json()["components"]["redis"].startswith("down")


async def outbox_rows(app: Any) -> list[dict[str, Any]]:
    async with app.state.database.engine.connect() as connection:
        rows = await connection.execute(text("SELECT * FROM outbox_events ORDER BY id"))
        return [dict(row._mapping) for row in rows]


def after_the_check(app: Any) -> datetime:
    """A moment when events published now are due for the relay's check."""
    check = timedelta(seconds=app.state.settings.EVENT_REDELIVER_CHECK_SECONDS)
    return utcnow() + check + timedelta(seconds=1)


class TestDeliveryEndToEnd:
    """An event is done when its handlers recorded it, not when XADD returned."""

    async def test_an_event_redis_lost_is_published_again_and_handled_once(
        self, make_app: AppFactory, sink: MailSink
    ) -> None:
        app = make_app(EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT)
        relay = app.state.events.relay
        await make_user(app, "lost")
        assert await relay.publish_pending() == 1
        worker = consumer(app)
        # Redis restarted without its data (or evicted the stream) before any
        # worker read the entry.
        await app.state.redis.delete(worker.settings.stream)
        await worker.ensure_group()
        assert await worker.process_once() == 0  # nothing left to read

        assert await relay.recover_lost(after_the_check(app)) == 1
        assert await relay.publish_pending() == 1
        assert await worker.process_once() == 1

        assert [m["To"] for m in sink.messages] == ["lost@example.com"]
        [row] = await outbox_rows(app)
        assert row["done_at"] is not None
        later = after_the_check(app) + timedelta(minutes=10)
        assert await relay.recover_lost(later) == 0  # done: never published again
        assert await relay.publish_pending() == 0

    async def test_a_running_relay_finds_and_republishes_what_redis_lost(
        self, make_app: AppFactory, sink: MailSink
    ) -> None:
        app = make_app(
            EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT,
            EVENT_REDELIVER_CHECK_SECONDS=0.2,
        )
        relay = app.state.events.relay
        await make_user(app, "found")
        await relay.publish_pending()
        worker = consumer(app)
        await app.state.redis.delete(worker.settings.stream)  # lost
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop, poll_seconds=0.1))
        try:
            for _ in range(50):
                if await app.state.redis.xlen(worker.settings.stream):
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
        await worker.ensure_group()
        await worker.process_once()

        assert [m["To"] for m in sink.messages] == ["found@example.com"]

    async def test_an_event_waiting_in_the_stream_is_not_published_twice(
        self, make_app: AppFactory, sink: MailSink
    ) -> None:
        # A slow (or stopped) worker: the entry is still there, only late.
        app = make_app(EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT)
        relay = app.state.events.relay
        await make_user(app, "patient")
        await relay.publish_pending()
        worker = consumer(app)

        assert await relay.recover_lost(after_the_check(app)) == 0
        assert await relay.publish_pending() == 0
        assert await app.state.redis.xlen(worker.settings.stream) == 1
        [row] = await outbox_rows(app)
        assert (row["published_at"] is not None, row["done_at"]) == (True, None)
        await worker.ensure_group()
        assert await worker.process_once() == 1
        assert len(sink.messages) == 1
        [row] = await outbox_rows(app)
        assert row["done_at"] is not None

    async def test_an_event_done_whose_publication_was_not_recorded_stays_done(
        self, make_app: AppFactory, sink: MailSink
    ) -> None:
        app = make_app(EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT)
        relay = app.state.events.relay
        user = await make_user(app, "recorded")
        worker = consumer(app)
        await worker.ensure_group()
        assert await relay.publish_pending() == 1
        assert await worker.process_once() == 1  # handled: the row is done
        # ...but the relay's commit after XADD failed (or, on PostgreSQL, the
        # worker's update waited for the relay's rollback): not published.
        async with app.state.database.engine.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE outbox_events SET published_at = NULL,"
                    " stream_id = NULL, next_attempt_at = NULL"
                )
            )
        async with app.state.database.sessionmaker() as session:
            await events.emit_user_event(session, "user.deactivated", user.id)
            await session.commit()

        # Only the later event of the same user goes out; the done one stays.
        assert await relay.publish_pending() == 1
        assert await relay.publish_pending() == 0
        entries = await app.state.redis.xrange(worker.settings.stream)
        assert [f["event_type"] for _, f in entries] == [
            "user.created",
            "user.deactivated",
        ]
        assert len(sink.messages) == 1

    async def test_an_event_is_done_only_once_every_handler_has_handled_it(
        self, make_app: AppFactory
    ) -> None:
        app = make_app()  # 0.2 s handler timeout: a retry comes quickly
        calls: Counter[str] = Counter()

        async def first(event: Event) -> None:
            calls["first"] += 1

        async def second(event: Event) -> None:
            calls["second"] += 1
            if calls["second"] == 1:
                raise RuntimeError("not this time")

        sessions = app.state.database.sessionmaker
        app.state.events.dispatcher.handlers["user.created"] = [
            Handler("first", sessions, first),
            Handler("second", sessions, second),
        ]
        await make_user(app, "two-handlers")
        worker = consumer(app)
        await worker.ensure_group()
        await app.state.events.relay.publish_pending()

        await worker.process_once()
        [row] = await outbox_rows(app)
        assert row["done_at"] is None  # the second handler still has to
        for _ in range(20):
            await asyncio.sleep(0.1)
            await worker.process_once()
            [row] = await outbox_rows(app)
            if row["done_at"] is not None:
                break

        assert row["done_at"] is not None
        assert calls == {"first": 1, "second": 2}

    async def test_events_no_handler_takes_are_done_once_published(
        self, make_app: AppFactory
    ) -> None:
        app = make_app()
        async with app.state.database.sessionmaker() as session:
            await events.emit(session, "item.created", "item", 1, {})
            await session.commit()

        assert await app.state.events.relay.publish_pending() == 1
        [row] = await outbox_rows(app)
        assert row["done_at"] is not None  # no worker write needed for it


class CheckingMeanwhile(RedisStreamPublisher):
    """A relay's publisher that lets another relay act while it checks the stream.

    The first relay reads the due rows, then asks Redis; `meanwhile` runs
    between the answer and the first relay's update, as a second relay in
    another process may.
    """

    def __init__(self, publisher: Any, meanwhile: Callable[[], Any]) -> None:
        super().__init__(
            publisher.redis, publisher.stream, max_length=publisher.max_length
        )
        self.meanwhile = meanwhile

    async def held(self, entry_ids: Sequence[str]) -> set[str]:
        found = await super().held(entry_ids)
        await self.meanwhile()
        return found


def second_relay(app: Any, meanwhile: Callable[[], Any]) -> OutboxRelay:
    first = app.state.events.relay
    return OutboxRelay(
        first.sessionmaker,
        CheckingMeanwhile(first.publisher, meanwhile),
        handled=first.handled,
        redeliver_after=first.redeliver_after,
    )


class TestRelaysCheckingTogether:
    """Relays check the same rows; each updates only a row still as it saw it."""

    async def test_two_relays_recovering_one_lost_event_send_one_email(
        self, make_app: AppFactory, sink: MailSink
    ) -> None:
        app = make_app(EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT)
        first = app.state.events.relay
        await make_user(app, "racer")
        assert await first.publish_pending() == 1
        stream = consumer(app).settings.stream
        await app.state.redis.delete(stream)  # Redis lost the entry
        when = after_the_check(app)

        async def first_recovers() -> None:
            assert await first.recover_lost(when) == 1
            assert await first.publish_pending() == 1  # a new entry

        second = second_relay(app, first_recovers)
        # The second relay saw the old entry missing, but the row has moved on.
        assert await second.recover_lost(when) == 0
        assert await first.publish_pending() == 0
        assert await app.state.redis.xlen(stream) == 1

        workers = consumer(app, "c1"), consumer(app, "c2")
        await workers[0].ensure_group()
        await asyncio.gather(*(worker.process_once() for worker in workers))
        assert [m["To"] for m in sink.messages] == ["racer@example.com"]

    async def test_an_event_lost_while_another_relay_checked_goes_out_at_once(
        self, make_app: AppFactory, sink: MailSink
    ) -> None:
        app = make_app(EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT)
        first = app.state.events.relay
        await make_user(app, "late")
        assert await first.publish_pending() == 1
        worker = consumer(app)
        when = after_the_check(app)

        async def lost_and_recovered() -> None:
            # The second relay found the entry; then Redis lost it and the
            # first relay made the event due again.
            await app.state.redis.delete(worker.settings.stream)
            assert await first.recover_lost(when) == 1

        second = second_relay(app, lost_and_recovered)
        assert await second.recover_lost(when) == 0
        # Not postponed by the second relay's stale "still there".
        assert await first.publish_pending() == 1
        await worker.ensure_group()
        assert await worker.process_once() == 1
        assert [m["To"] for m in sink.messages] == ["late@example.com"]


@pytest.fixture
async def restricted_redis_url(prefix: str) -> AsyncIterator[Callable[[str], Any]]:
    """URLs of Redis users denied a command (a managed Redis's ACL, say)."""
    redis = Redis.from_url(str(TEST_REDIS_URL))
    names: list[str] = []

    async def denied(command: str) -> str:
        name = f"test-{uuid.uuid4().hex[:10]}"  # no ":" (it would end the name)
        names.append(name)
        await redis.acl_setuser(
            name,
            enabled=True,
            passwords=["+secret"],
            keys=[f"{prefix}*"],
            commands=["+@all", f"-{command}"],
        )
        return str(TEST_REDIS_URL).replace("redis://", f"redis://{name}:secret@", 1)

    try:
        yield denied
    finally:
        for name in names:
            await redis.acl_deluser(name)
        await redis.aclose()


async def test_an_upkeep_redis_refuses_is_logged_once_a_minute(
    make_app: AppFactory,
    restricted_redis_url: Callable[[str], Any],
    sink: MailSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(
        REDIS_URL=await restricted_redis_url("xinfo"),
        EVENT_HANDLER_TIMEOUT_SECONDS=MAIL_HANDLER_TIMEOUT,
    )
    relay = app.state.events.relay
    worker = consumer(app)
    await worker.ensure_group()
    await make_user(app, "kept")
    assert await relay.publish_pending() == 1
    await app.state.redis.delete(worker.settings.stream)  # lost

    # create_app set the root logger's handlers: listen on the relay's logger.
    relay_logger = logging.getLogger("app.events")
    relay_logger.addHandler(caplog.handler)
    try:
        await relay.upkeep()  # trimming needs XINFO: refused
        await relay.upkeep()
    finally:
        relay_logger.removeHandler(caplog.handler)
    failures = [r for r in caplog.records if r.getMessage() == "event_upkeep_failed"]
    assert [(r.step, r.error) for r in failures] == [("trim", "NoPermissionError")]  # type: ignore[attr-defined]
    assert "xinfo" in failures[0].detail.lower()  # type: ignore[attr-defined]

    # What Redis allows still runs: the lost event goes out again.
    assert await relay.recover_lost(after_the_check(app)) == 1
    assert await relay.publish_pending() == 1
    await worker.ensure_group()
    assert await worker.process_once() == 1
    assert [m["To"] for m in sink.messages] == ["kept@example.com"]


async def test_an_event_redis_refuses_to_take_waits_without_using_attempts(
    make_app: AppFactory, restricted_redis_url: Callable[[str], Any]
) -> None:
    # An XADD refused (here an ACL; a full Redis's OOM alike) is not the
    # event's fault: it waits in the outbox, however long, never given up.
    app = make_app(REDIS_URL=await restricted_redis_url("xadd"))
    await make_user(app, "waiting")
    for _ in range(3):  # more than EVENT_MAX_DELIVERIES
        async with app.state.database.engine.begin() as connection:
            await connection.execute(
                text("UPDATE outbox_events SET next_attempt_at = NULL")
            )
        assert await app.state.events.relay.publish_pending() == 0

    [row] = await outbox_rows(app)
    assert (row["attempts"], row["published_at"]) == (0, None)
    assert "NoPermissionError" in row["last_error"]


class TestTrim:
    """The stream keeps every entry some consumer group has not acknowledged."""

    async def publish(self, app: Any, count: int) -> None:
        async with app.state.database.sessionmaker() as session:
            for index in range(count):  # one aggregate each: one pass sends many
                await events.emit(session, "item.created", "item", index, {})
            await session.commit()
        while await app.state.events.relay.publish_pending():
            pass

    async def test_a_slow_worker_loses_nothing_and_acknowledged_entries_go(
        self, make_app: AppFactory
    ) -> None:
        app = make_app(OUTBOX_BATCH_SIZE=500)
        worker = consumer(app)
        await worker.ensure_group()
        await self.publish(app, 250)
        stream = worker.settings.stream
        entries = [entry_id for entry_id, _ in await app.state.redis.xrange(stream)]
        for _ in range(150):  # the worker got through 150 of 250
            assert await worker.process_once() == 1

        await app.state.events.relay.upkeep()

        left = [entry_id for entry_id, _ in await app.state.redis.xrange(stream)]
        assert set(entries[150:]) <= set(left)  # nothing unacknowledged went
        assert len(left) <= 150  # whole nodes of acknowledged entries did

    async def test_a_group_that_has_not_acknowledged_keeps_the_entries(
        self, make_app: AppFactory
    ) -> None:
        app = make_app(OUTBOX_BATCH_SIZE=500)
        worker = consumer(app)
        await worker.ensure_group()
        stream = worker.settings.stream
        # A second group (another service reading the stream) took entries
        # and has acknowledged none of them yet.
        await app.state.redis.xgroup_create(stream, "audit", id="0")
        await self.publish(app, 250)
        await app.state.redis.xreadgroup("audit", "a1", {stream: ">"}, count=250)
        for _ in range(250):
            await worker.process_once()

        await app.state.events.relay.upkeep()

        assert await app.state.redis.xlen(stream) == 250

    async def test_without_any_group_nothing_is_trimmed(
        self, make_app: AppFactory
    ) -> None:
        # No worker has started yet: the first one reads from the start.
        app = make_app(OUTBOX_BATCH_SIZE=500)
        await self.publish(app, 250)

        await app.state.events.relay.upkeep()

        stream = consumer(app).settings.stream
        assert await app.state.redis.xlen(stream) == 250

    async def test_a_group_no_one_reads_cannot_grow_the_stream_past_the_cap(
        self, make_app: AppFactory
    ) -> None:
        app = make_app(OUTBOX_BATCH_SIZE=500, EVENT_STREAM_MAX_LENGTH=100)
        worker = consumer(app)
        await worker.ensure_group()
        stream = worker.settings.stream
        # A group a retired service left behind: it pins trimming for good.
        await app.state.redis.xgroup_create(stream, "retired", id="0")
        await self.publish(app, 350)
        for _ in range(350):
            await worker.process_once()

        await app.state.events.relay.upkeep()

        # About the cap (whole 100-entry nodes go), not all 350; the newest stay.
        left = await app.state.redis.xrange(stream)
        assert 100 <= len(left) < 200
        items = {int(fields["aggregate_id"]) for _, fields in left}
        assert set(range(250, 350)) <= items
