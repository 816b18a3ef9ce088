"""The mail transports against a real SMTP server (aiosmtpd) running in-process."""

from __future__ import annotations

import asyncio
import email
import logging
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage as MimeMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from app.core.email import (
    EmailMessage,
    EmailRejectedError,
    EmailTransport,
    EmailUnavailableError,
    FileTransport,
    SmtpConfig,
    SmtpTransport,
    build_transport,
)

SMTP_USER = "mailer"
SMTP_PASSWORD = "smtp-pass-Zq8!never-logged"
MESSAGE = EmailMessage(
    to="ada@example.org",
    subject="Hello Ada",
    text="Plain body\n",
    html="<p>HTML body</p>\n",
)


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps what it accepts and refuses on demand."""

    received: list[Envelope] = field(default_factory=list)
    data_attempts: int = 0
    rcpt_attempts: int = 0
    auth_attempts: int = 0
    # Replies given instead of accepting, one per attempt, before accepting.
    data_replies: list[str] = field(default_factory=list)
    rcpt_replies: list[str] = field(default_factory=list)

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        self.rcpt_attempts += 1
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.data_attempts += 1
        if self.data_replies:
            return self.data_replies.pop(0)
        self.received.append(envelope)
        return "250 Message accepted for delivery"

    def authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        self.auth_attempts += 1
        valid = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(),
            auth_data.password.decode(),
        ) == (SMTP_USER, SMTP_PASSWORD)
        # handled=False: aiosmtpd then answers 535 itself.
        return AuthResult(success=valid, handled=False)


def state_of(transport: EmailTransport) -> str:
    # A function call, so mypy does not keep a narrowed state across awaits.
    return transport.breaker_state


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(inbox: Inbox, port: int, **smtp_options: Any) -> Controller:
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        server_hostname="mail.test",  # skips a slow FQDN lookup
        **smtp_options,
    )
    controller.start()
    return controller


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def smtp_port(inbox: Inbox) -> Iterator[int]:
    port = free_port()
    controller = start_server(inbox, port)
    yield port
    controller.stop()


def smtp_config(port: int, **overrides: Any) -> SmtpConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "use_tls": False,
        "from_email": "noreply@example.com",
        "from_name": "Example App",
        "timeout_seconds": 2.0,
        "retries": 3,
        "retry_wait_seconds": 0.01,
        "retry_max_wait_seconds": 0.02,
    }
    values.update(overrides)
    return SmtpConfig(**values)


def parse(raw: bytes) -> MimeMessage:
    parsed = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(parsed, MimeMessage)
    return parsed


def assert_is_message(parsed: MimeMessage, message: EmailMessage) -> None:
    assert parsed["From"] == "Example App <noreply@example.com>"
    assert parsed["To"] == message.to
    assert parsed["Subject"] == message.subject
    assert parsed["Date"].datetime.tzinfo is not None
    assert re.fullmatch(r"<[^<>@]+@example\.com>", parsed["Message-ID"])
    assert parsed.get_content_type() == "multipart/alternative"
    text_part = parsed.get_body(("plain",))
    html_part = parsed.get_body(("html",))
    assert text_part is not None
    assert html_part is not None
    # On the wire (and in the .eml) lines end in CRLF.
    assert text_part.get_content().replace("\r\n", "\n") == message.text
    assert html_part.get_content().replace("\r\n", "\n") == message.html


async def test_smtp_delivers_one_message_with_text_and_html(
    inbox: Inbox, smtp_port: int
) -> None:
    transport = SmtpTransport(smtp_config(smtp_port))

    await transport.send(MESSAGE)

    [envelope] = inbox.received
    assert envelope.mail_from == "noreply@example.com"
    assert envelope.rcpt_tos == ["ada@example.org"]
    assert isinstance(envelope.content, bytes)
    assert_is_message(parse(envelope.content), MESSAGE)
    assert (transport.sent_total, transport.failed_total) == (1, 0)
    assert state_of(transport) == "closed"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_smtp_logs_in_and_never_logs_the_password(
    inbox: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    controller = start_server(
        inbox,
        port,
        authenticator=inbox.authenticate,
        auth_required=True,
        auth_require_tls=False,  # loopback test server without a certificate
        auth_exclude_mechanism=["LOGIN"],  # one mechanism: one AUTH per attempt
    )
    caplog.set_level(logging.DEBUG)
    try:
        config = smtp_config(port, user=SMTP_USER, password=SMTP_PASSWORD)
        await SmtpTransport(config).send(MESSAGE)
        assert len(inbox.received) == 1

        wrong = SmtpTransport(replace(config, password="wrong-Pa55word"))
        with pytest.raises(EmailUnavailableError) as raised:
            await wrong.send(MESSAGE)
    finally:
        controller.stop()

    assert isinstance(raised.value.__cause__, aiosmtplib.SMTPAuthenticationError)
    assert inbox.auth_attempts == 2  # a 535 is permanent: not retried
    assert wrong.failed_total == 1
    assert SMTP_PASSWORD not in repr(config)
    logged = caplog.text + repr([record.__dict__ for record in caplog.records])
    assert SMTP_PASSWORD not in logged
    assert "wrong-Pa55word" not in logged
    # The server's own debug log ("mail.log") shows the DATA it read; ours must not.
    ours = [r for r in caplog.records if r.name != "mail.log"]
    assert any(r.name == "app.email" for r in ours)
    assert MESSAGE.text.strip() not in repr([r.__dict__ for r in ours])


async def test_transient_refusals_are_retried_and_delivered_once(
    inbox: Inbox, smtp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    inbox.data_replies = ["451 4.3.0 try later"]
    inbox.rcpt_replies = ["450 4.2.1 mailbox busy"]
    transport = SmtpTransport(smtp_config(smtp_port, retries=3))
    caplog.set_level(logging.WARNING, logger="app.email")

    await transport.send(MESSAGE)

    assert len(inbox.received) == 1
    assert inbox.rcpt_attempts == 3
    assert inbox.data_attempts == 2
    assert (transport.sent_total, transport.failed_total) == (1, 0)
    retries = [r for r in caplog.records if getattr(r, "event", None) == "email_retry"]
    assert [r.__dict__["attempt"] for r in retries] == [1, 2]
    assert {r.__dict__["error"] for r in retries} == {
        "SMTPRecipientsRefused",
        "SMTPDataError",
    }


async def test_exhausted_retries_raise_unavailable_and_log_the_failure(
    inbox: Inbox, smtp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    inbox.data_replies = ["451 4.3.0 try later"] * 5
    transport = SmtpTransport(smtp_config(smtp_port, retries=2))
    caplog.set_level(logging.WARNING, logger="app.email")

    with pytest.raises(EmailUnavailableError) as raised:
        await transport.send(MESSAGE)

    assert isinstance(raised.value.__cause__, aiosmtplib.SMTPDataError)
    assert inbox.data_attempts == 2
    assert inbox.received == []
    assert (transport.sent_total, transport.failed_total) == (0, 1)
    [failure] = [
        r for r in caplog.records if getattr(r, "event", None) == "email_failed"
    ]
    assert failure.levelno == logging.WARNING
    assert failure.__dict__["to_domain"] == "example.org"
    assert failure.__dict__["error"] == "SMTPDataError"


@pytest.mark.parametrize(
    ("rcpt_replies", "data_replies", "cause"),
    [
        (["550 5.1.1 no such user"], [], aiosmtplib.SMTPRecipientsRefused),
        ([], ["554 5.7.1 message refused"], aiosmtplib.SMTPDataError),
    ],
)
async def test_permanent_refusal_is_not_retried_and_leaves_the_breaker_closed(
    inbox: Inbox,
    smtp_port: int,
    rcpt_replies: list[str],
    data_replies: list[str],
    cause: type[Exception],
) -> None:
    inbox.rcpt_replies = rcpt_replies
    inbox.data_replies = data_replies
    config = smtp_config(smtp_port, retries=3, breaker_failure_threshold=1)
    transport = SmtpTransport(config)

    with pytest.raises(EmailRejectedError) as raised:
        await transport.send(MESSAGE)

    assert isinstance(raised.value.__cause__, cause)
    assert inbox.rcpt_attempts == 1
    assert inbox.received == []
    assert state_of(transport) == "closed"
    assert transport.failed_total == 1


async def test_non_ascii_address_without_smtputf8_is_rejected(
    inbox: Inbox,
) -> None:
    port = free_port()
    controller = start_server(inbox, port, enable_SMTPUTF8=False)
    try:
        transport = SmtpTransport(smtp_config(port, breaker_failure_threshold=1))
        with pytest.raises(EmailRejectedError):
            await transport.send(replace(MESSAGE, to="zoë@example.org"))
    finally:
        controller.stop()
    assert inbox.rcpt_attempts == 0
    assert state_of(transport) == "closed"


async def test_breaker_opens_fails_fast_and_recovers(inbox: Inbox) -> None:
    port = free_port()  # nothing listens here yet
    config = smtp_config(
        port, retries=2, breaker_failure_threshold=2, breaker_recovery_seconds=0.5
    )
    transport = SmtpTransport(config)

    for _ in range(2):
        with pytest.raises(EmailUnavailableError) as raised:
            await transport.send(MESSAGE)
        assert isinstance(raised.value.__cause__, OSError)
    assert state_of(transport) == "open"

    # A server now listens: a send that touched the network would be delivered.
    controller = await asyncio.to_thread(start_server, inbox, port)
    try:
        started = time.monotonic()
        with pytest.raises(EmailUnavailableError, match="circuit is open"):
            await transport.send(MESSAGE)
        assert time.monotonic() - started < 0.5
        assert inbox.received == []
        assert transport.failed_total == 3

        await asyncio.sleep(0.6)
        assert state_of(transport) == "half_open"
        await transport.send(MESSAGE)
    finally:
        await asyncio.to_thread(controller.stop)

    assert len(inbox.received) == 1
    assert state_of(transport) == "closed"
    assert transport.sent_total == 1


async def test_a_failed_trial_reopens_the_breaker() -> None:
    config = smtp_config(
        free_port(),
        retries=1,
        breaker_failure_threshold=1,
        breaker_recovery_seconds=0.2,
    )
    transport = SmtpTransport(config)
    with pytest.raises(EmailUnavailableError):
        await transport.send(MESSAGE)
    assert state_of(transport) == "open"

    await asyncio.sleep(0.3)
    assert state_of(transport) == "half_open"
    with pytest.raises(EmailUnavailableError, match="unavailable"):
        await transport.send(MESSAGE)
    assert state_of(transport) == "open"


async def test_each_transport_has_its_own_breaker() -> None:
    config = smtp_config(free_port(), retries=1, breaker_failure_threshold=1)
    broken = SmtpTransport(config)
    with pytest.raises(EmailUnavailableError):
        await broken.send(MESSAGE)

    assert state_of(broken) == "open"
    assert SmtpTransport(config).breaker_state == "closed"


async def test_header_injection_is_refused_before_sending(
    inbox: Inbox, smtp_port: int
) -> None:
    transport = SmtpTransport(smtp_config(smtp_port))
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        await transport.send(replace(MESSAGE, subject="Hi\r\nBcc: eve@example.net"))
    assert inbox.rcpt_attempts == 0


async def test_file_transport_writes_parsable_eml_files_in_order(
    tmp_path: Path,
) -> None:
    mail_dir = tmp_path / "mail"
    transport = FileTransport(
        mail_dir, from_email="noreply@example.com", from_name="Example App"
    )
    second = replace(MESSAGE, subject="Second")

    await transport.send(MESSAGE)
    await transport.send(second)

    files = sorted(mail_dir.iterdir())
    assert [path.suffix for path in files] == [".eml", ".eml"]
    assert all(
        re.fullmatch(r"\d{8}T\d{12}Z-[0-9a-f]{32}\.eml", path.name) for path in files
    )
    first_raw = files[0].read_bytes()
    assert b"\r\n" in first_raw  # RFC 5322 line endings
    assert_is_message(parse(first_raw), MESSAGE)
    assert_is_message(parse(files[1].read_bytes()), second)
    assert (transport.sent_total, transport.failed_total) == (2, 0)
    assert state_of(transport) == "closed"


async def test_file_transport_unwritable_folder_is_unavailable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    transport = FileTransport(not_a_folder)
    caplog.set_level(logging.WARNING, logger="app.email")

    with pytest.raises(EmailUnavailableError):
        await transport.send(MESSAGE)

    assert transport.failed_total == 1
    assert [getattr(r, "event", None) for r in caplog.records] == ["email_failed"]


def test_build_transport_chooses_by_configuration(tmp_path: Path) -> None:
    smtp = build_transport(smtp_config(2525), str(tmp_path))
    assert isinstance(smtp, SmtpTransport)

    folder = build_transport(
        None, str(tmp_path), from_email="team@example.com", from_name="Team"
    )
    assert isinstance(folder, FileTransport)
    assert folder.directory == tmp_path
    assert (folder.from_email, folder.from_name) == ("team@example.com", "Team")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"use_tls": True, "use_ssl": True}, "exclusive"),
        ({"password": "x"}, "SMTP_PASSWORD needs SMTP_USER"),
        ({"retries": 0}, "retries"),
        ({"breaker_failure_threshold": 0}, "threshold"),
        ({"breaker_recovery_seconds": 0}, "recovery"),
    ],
)
def test_config_refuses_inconsistent_settings(
    overrides: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        smtp_config(25, **overrides)


def test_config_defaults_follow_the_settings() -> None:
    config = SmtpConfig(host="smtp.example.com", from_email="noreply@example.com")
    assert (config.port, config.use_tls, config.use_ssl) == (587, True, False)
    assert (config.timeout_seconds, config.retries) == (10.0, 3)
    assert (config.breaker_failure_threshold, config.breaker_recovery_seconds) == (
        5,
        30.0,
    )
