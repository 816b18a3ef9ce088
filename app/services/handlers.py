"""Event handlers (welcome, verification and reset emails) and their dispatcher."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import email_templates, events, metrics
from app.core.email import EmailMessage, EmailTransport
from app.core.events import Event
from app.core.tokens import hash_refresh_token, new_refresh_token
from app.models.base import utcnow
from app.models.outbox import ActionToken
from app.repositories import outbox
from app.repositories.users import UserRepository

logger = logging.getLogger("app.events")

EMAIL_VERIFICATION = "verify_email"
PASSWORD_RESET = "password_reset"  # noqa: S105 - a token purpose, not a secret


@dataclass(frozen=True, slots=True)
class MailSettings:
    """What the email handlers need from the settings."""

    frontend_url: str
    token_expire_minutes: int


Action = Callable[[Event], Awaitable[None]]


class Handler:
    """A named, idempotent reaction to one event type."""

    def __init__(
        self, name: str, sessionmaker: async_sessionmaker[AsyncSession], action: Action
    ) -> None:
        """Run `action` at most once per event id (remembered in the database)."""
        self.name = name
        self.sessionmaker = sessionmaker
        self.action = action

    async def __call__(self, event: Event) -> None:
        """Handle `event` unless this handler already did.

        At-least-once delivery means duplicates arrive (a relay crash between
        publish and mark-published, a redelivered stream entry, an event
        published again after Redis lost it): they are recognised by event id
        and ignored. A crash between the action (the SMTP server accepted the
        email) and the commit of its record still repeats the action.
        """
        async with self.sessionmaker() as session:
            if await outbox.already_processed(session, self.name, event.event_id):
                logger.info(
                    "duplicate event ignored",
                    extra={"event_id": event.event_id, "handler": self.name},
                )
                return
        await self.action(event)
        async with self.sessionmaker() as session:
            await outbox.remember_processed(session, self.name, event.event_id)
            await session.commit()
        metrics.EVENTS_HANDLED.labels(event.event_type, self.name).inc()


class EventDispatcher:
    """Routes events to their handlers."""

    def __init__(self) -> None:
        """Start with no handlers."""
        self.handlers: dict[str, list[Handler]] = {}

    def on(self, event_type: str, handler: Handler) -> None:
        """Register `handler` for `event_type`."""
        self.handlers.setdefault(event_type, []).append(handler)

    def handles(self, event_type: str) -> bool:
        """Whether any handler takes `event_type` (else it is done once published)."""
        return bool(self.handlers.get(event_type))

    async def dispatch(self, event: Event) -> None:
        """Run every handler of the event; raise if any failed (others stay done)."""
        failure: Exception | None = None
        for handler in self.handlers.get(event.event_type, []):
            try:
                await handler(event)
            except Exception as exc:
                metrics.EVENTS_FAILED.labels(event.event_type, handler.name).inc()
                logger.warning(
                    "event handler failed",
                    extra={
                        "event_id": event.event_id,
                        "handler": handler.name,
                        "error": type(exc).__name__,
                    },
                )
                failure = failure or exc
        if failure is not None:
            raise failure


async def _send(
    transport: EmailTransport, template: str, message: EmailMessage
) -> None:
    try:
        await transport.send(message)
    except Exception:
        metrics.EMAILS_FAILED.labels(template).inc()
        raise
    metrics.EMAILS_SENT.labels(template).inc()


async def _issue_token(
    sessionmaker: async_sessionmaker[AsyncSession],
    user_id: int,
    purpose: str,
    minutes: int,
) -> str:
    token = new_refresh_token()
    async with sessionmaker() as session:
        session.add(
            ActionToken(
                user_id=user_id,
                purpose=purpose,
                token_hash=hash_refresh_token(token),
                expires_at=utcnow() + timedelta(minutes=minutes),
            )
        )
        await session.commit()
    return token


def build_dispatcher(
    sessionmaker: async_sessionmaker[AsyncSession],
    transport: EmailTransport,
    mail: MailSettings,
) -> EventDispatcher:
    """The handlers of this service, wired to a mail transport.

    Args:
        sessionmaker: Database sessions (idempotency records, tokens).
        transport: Where emails go.
        mail: Link base and token lifetime.

    Returns:
        A dispatcher for `user.created`, verification and reset requests.
    """

    async def welcome(event: Event) -> None:
        message = email_templates.render_welcome(
            event.payload["email"], event.payload["name"]
        )
        await _send(transport, "welcome", message)

    async def tokened(event: Event, purpose: str) -> None:
        async with sessionmaker() as session:
            user = await UserRepository(session).get(int(event.aggregate_id))
        if user is None or not user.is_active:
            return  # the account went away meanwhile: nothing to send
        token = await _issue_token(
            sessionmaker, user.id, purpose, mail.token_expire_minutes
        )
        render = (
            email_templates.render_verify_email
            if purpose == EMAIL_VERIFICATION
            else email_templates.render_password_reset
        )
        message = render(
            user.email,
            user.display_name,
            mail.frontend_url,
            token,
            mail.token_expire_minutes,
        )
        await _send(transport, purpose, message)

    async def verification(event: Event) -> None:
        await tokened(event, EMAIL_VERIFICATION)

    async def reset(event: Event) -> None:
        await tokened(event, PASSWORD_RESET)

    dispatcher = EventDispatcher()
    dispatcher.on(events.USER_CREATED, Handler("welcome_email", sessionmaker, welcome))
    dispatcher.on(
        events.USER_VERIFICATION_REQUESTED,
        Handler("verification_email", sessionmaker, verification),
    )
    dispatcher.on(
        events.USER_PASSWORD_RESET_REQUESTED,
        Handler("password_reset_email", sessionmaker, reset),
    )
    return dispatcher
