"""Mail transport behind an interface: SMTP in production, a folder in development."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage as MimeMessage
from email.utils import format_datetime, formataddr, make_msgid
from functools import partial
from pathlib import Path
from typing import Literal, Protocol, cast

import aiosmtplib
from circuitbreaker import CircuitBreaker  # type: ignore[import-untyped]
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from app.core.exceptions import DependencyUnavailableError

logger = logging.getLogger("app.email")

BreakerState = Literal["closed", "open", "half_open"]
DEFAULT_FROM_EMAIL = "noreply@example.com"


class EmailError(Exception):
    """A message could not be delivered."""


class EmailUnavailableError(EmailError, DependencyUnavailableError):
    """The transport cannot deliver now (server down, circuit open): retry later."""


class EmailRejectedError(EmailError):
    """The server refused this message for good (5xx on a recipient or the data).

    Sending the same message again will fail again, so a worker should give up on it
    (dead-letter it) instead of retrying.
    """


@dataclass(frozen=True, slots=True)
class EmailMessage:
    """One outgoing email with a plain-text and an HTML body."""

    to: str
    subject: str
    text: str
    html: str

    def to_mime(self, from_email: str, from_name: str | None = None) -> MimeMessage:
        """Build the RFC 5322 message: multipart/alternative, text first, then HTML.

        Args:
            from_email: The sender address (the `From` header and the envelope sender).
            from_name: A display name for `From`, if any.

        Returns:
            A stdlib message with `From`, `To`, `Subject`, `Date` and `Message-ID`.

        Raises:
            ValueError: A header value contains a line break (header injection).
        """
        mime = MimeMessage(policy=policy.SMTP)
        mime["From"] = formataddr((from_name or "", from_email))
        mime["To"] = self.to
        mime["Subject"] = self.subject
        mime["Date"] = format_datetime(datetime.now(UTC))
        # An explicit domain: without one, make_msgid does a (slow) FQDN lookup.
        mime["Message-ID"] = make_msgid(domain=_domain_of(from_email) or "localhost")
        mime.set_content(self.text)
        mime.add_alternative(self.html, subtype="html")
        return mime


class EmailTransport(Protocol):
    """Delivers messages; exposes counters and breaker state for /ready and /metrics."""

    @property
    def sent_total(self) -> int:
        """Messages delivered since start."""
        ...

    @property
    def failed_total(self) -> int:
        """Sends that raised since start (including those refused by an open circuit)."""
        ...

    @property
    def breaker_state(self) -> BreakerState:
        """The circuit breaker state: `closed`, `open` or `half_open`."""
        ...

    async def send(self, message: EmailMessage) -> None:
        """Deliver `message`.

        Raises:
            EmailUnavailableError: Not delivered now; the same message may succeed later.
            EmailRejectedError: Refused for good by the server.
        """
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpConfig:
    """How to reach the SMTP server, and how hard to try.

    Settings map as: `SMTP_HOST` -> `host`, `SMTP_PORT` -> `port`, `SMTP_USER` ->
    `user`, `SMTP_PASSWORD` -> `password`, `SMTP_TLS` -> `use_tls` (STARTTLS after
    connecting), `SMTP_SSL` -> `use_ssl` (implicit TLS from the first byte, usually
    port 465), `EMAILS_FROM_EMAIL` -> `from_email`, `EMAILS_FROM_NAME` -> `from_name`,
    `SMTP_TIMEOUT_SECONDS` -> `timeout_seconds`. The rest keep their defaults unless
    tests or operators need otherwise.

    Attributes:
        host: Server name or address.
        from_email: Envelope sender and `From` address.
        port: Server port.
        user: Login name; no AUTH when empty.
        password: Login password; excluded from `repr` so it never reaches a log.
        use_tls: Upgrade with STARTTLS (required: fails if the server does not offer it).
        use_ssl: Connect with implicit TLS; exclusive with `use_tls`.
        from_name: Display name for `From`.
        timeout_seconds: Timeout of each network operation.
        retries: Attempts per send (1 means no retry).
        retry_wait_seconds: First backoff wait, also the jitter added to each wait.
        retry_max_wait_seconds: Upper bound of one backoff wait.
        breaker_failure_threshold: Failed sends in a row that open the circuit.
        breaker_recovery_seconds: How long an open circuit refuses before one trial.
    """

    host: str
    from_email: str
    port: int = 587
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    use_tls: bool = True
    use_ssl: bool = False
    from_name: str | None = None
    timeout_seconds: float = 10.0
    retries: int = 3
    retry_wait_seconds: float = 0.5
    retry_max_wait_seconds: float = 5.0
    breaker_failure_threshold: int = 5
    breaker_recovery_seconds: float = 30.0

    def __post_init__(self) -> None:
        """Refuse settings that would fail on every send or silently skip AUTH."""
        problems = [
            message
            for failed, message in (
                (self.use_tls and self.use_ssl, "SMTP_TLS and SMTP_SSL are exclusive"),
                (
                    bool(self.password) and not self.user,
                    "SMTP_PASSWORD needs SMTP_USER",
                ),
                (self.retries < 1, "retries must be at least 1"),
                (self.breaker_failure_threshold < 1, "breaker threshold must be >= 1"),
                # circuitbreaker reads a zero recovery time as "use 30 s".
                (self.breaker_recovery_seconds <= 0, "breaker recovery must be > 0"),
            )
            if failed
        ]
        if problems:
            raise ValueError("; ".join(problems))


class SmtpTransport:
    """SMTP through aiosmtplib, with retries (tenacity) inside a circuit breaker.

    A send makes up to `retries` attempts, with exponential backoff and jitter, on
    transient failures only: connection errors, timeouts, disconnects and 4xx replies.
    A 5xx reply is permanent (RFC 5321) and is not retried. The whole send, retries
    included, counts once for the breaker; after `breaker_failure_threshold` failed
    sends in a row the circuit opens and sends fail fast with `EmailUnavailableError`
    without touching the network, until `breaker_recovery_seconds` have passed and a
    trial send (half-open) closes it again or re-opens it. A permanent refusal of the
    recipient or the content does not count: the server answered, it is healthy.
    The library lets every send through while half-open, not a single trial, so a
    burst right after recovery may all fail against a still-broken server.
    """

    def __init__(self, config: SmtpConfig) -> None:
        """Create a transport with its own, closed, circuit breaker."""
        self.config = config
        self.sent_total = 0
        self.failed_total = 0
        # One breaker per instance, and used without its decorator, which would also
        # register it in circuitbreaker's process-wide monitor.
        self._breaker = CircuitBreaker(
            failure_threshold=config.breaker_failure_threshold,
            recovery_timeout=config.breaker_recovery_seconds,
            expected_exception=_counts_against_breaker,
            name=f"smtp-{config.host}:{config.port}",
        )

    @property
    def breaker_state(self) -> BreakerState:
        """The circuit breaker state: `closed`, `open` or `half_open`."""
        return cast(BreakerState, self._breaker.state)

    async def send(self, message: EmailMessage) -> None:
        """Deliver `message`, retrying transient failures.

        Args:
            message: The email to send.

        Raises:
            EmailUnavailableError: The circuit is open, or every attempt failed.
            EmailRejectedError: The server refused the recipient or the content (5xx).
            ValueError: A header of `message` contains a line break.
        """
        if self._breaker.opened:
            self._record_failure(message, "CircuitOpen")
            raise EmailUnavailableError("mail server circuit is open; not sending")
        mime = message.to_mime(self.config.from_email, self.config.from_name)
        try:
            await self._breaker.call_async(self._send_with_retries, mime, message.to)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._record_failure(message, type(exc).__name__)
            if _is_message_rejection(exc):
                raise EmailRejectedError(f"message refused: {exc}") from exc
            raise EmailUnavailableError(f"mail server unavailable: {exc}") from exc
        self.sent_total += 1

    async def _send_with_retries(self, mime: MimeMessage, to: str) -> None:
        wait = self.config.retry_wait_seconds
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.retries),
            wait=wait_exponential_jitter(
                multiplier=wait, max=self.config.retry_max_wait_seconds, jitter=wait
            ),
            retry=retry_if_exception(_is_transient),
            before_sleep=partial(_log_retry, _domain_of(to)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._deliver(mime, to)

    async def _deliver(self, mime: MimeMessage, to: str) -> None:
        config = self.config
        await aiosmtplib.send(
            mime,
            sender=config.from_email,
            recipients=[to],
            hostname=config.host,
            port=config.port,
            username=config.user or None,
            password=config.password,
            use_tls=config.use_ssl,
            # False, not None: None would upgrade opportunistically despite SMTP_TLS.
            start_tls=config.use_tls,
            timeout=config.timeout_seconds,
        )

    def _record_failure(self, message: EmailMessage, error: str) -> None:
        self.failed_total += 1
        _log_failure(message.to, error)


class FileTransport:
    """Development transport: each message becomes an `.eml` file in a folder.

    File names are `<UTC timestamp>-<uuid>.eml`, so a sorted listing is in send
    order; each file is written under a temporary name and renamed, so a reader never
    sees half a message.
    """

    breaker_state: BreakerState = "closed"

    def __init__(
        self,
        directory: str | Path,
        from_email: str = DEFAULT_FROM_EMAIL,
        from_name: str | None = None,
    ) -> None:
        """Write into `directory` (created on first send)."""
        self.directory = Path(directory)
        self.from_email = from_email
        self.from_name = from_name
        self.sent_total = 0
        self.failed_total = 0

    async def send(self, message: EmailMessage) -> None:
        """Write `message` as an `.eml` file (in a thread: disk I/O blocks).

        Args:
            message: The email to write.

        Raises:
            EmailUnavailableError: The folder cannot be written.
            ValueError: A header of `message` contains a line break.
        """
        mime = message.to_mime(self.from_email, self.from_name)
        try:
            await asyncio.to_thread(self._write, mime.as_bytes())
        except OSError as exc:
            self.failed_total += 1
            _log_failure(message.to, type(exc).__name__)
            raise EmailUnavailableError(f"cannot write mail file: {exc}") from exc
        self.sent_total += 1

    def _write(self, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{uuid.uuid4().hex}.eml"
        target = self.directory / name
        temporary = self.directory / f".{name}.part"
        temporary.write_bytes(data)
        os.replace(temporary, target)
        return target


def build_transport(
    config: SmtpConfig | None,
    mail_dir: str,
    *,
    from_email: str = DEFAULT_FROM_EMAIL,
    from_name: str | None = None,
) -> EmailTransport:
    """Choose the transport from settings: SMTP when configured, else a folder.

    Args:
        config: SMTP settings, or None when `SMTP_HOST` is empty.
        mail_dir: `MAIL_DIR`, where the development transport writes.
        from_email: `EMAILS_FROM_EMAIL`, used by the development transport.
        from_name: `EMAILS_FROM_NAME`, used by the development transport.

    Returns:
        An `SmtpTransport` when `config` is given, a `FileTransport` otherwise.
    """
    if config is not None:
        return SmtpTransport(config)
    return FileTransport(mail_dir, from_email=from_email, from_name=from_name)


def _is_message_rejection(exc: BaseException) -> bool:
    """A permanent refusal of this message's recipient or content, not of the server."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(refusal.code >= 500 for refusal in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return (
            True  # raised only when this address needs SMTPUTF8 and the server lacks it
        )
    return (
        isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError)
        and exc.code >= 500
    )


def _is_transient(exc: BaseException) -> bool:
    """Worth another attempt: network trouble, timeouts or a 4xx reply."""
    if _is_message_rejection(exc):
        return False
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code < 500
    return isinstance(exc, aiosmtplib.SMTPException | OSError)


def _counts_against_breaker(_: type[BaseException], exc: BaseException) -> bool:
    # Everything else counts, a caller's cancellation (its timeout) included: from
    # the caller's side a server that slow is as good as down.
    return not _is_message_rejection(exc)


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def _log_failure(to: str, error: str) -> None:
    logger.warning(
        "email send failed",
        extra={"event": "email_failed", "to_domain": _domain_of(to), "error": error},
    )


def _log_retry(to_domain: str, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning(
        "email send attempt failed; retrying",
        extra={
            "event": "email_retry",
            "to_domain": to_domain,
            "error": type(exc).__name__,
            "attempt": state.attempt_number,
        },
    )
