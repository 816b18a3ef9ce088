"""The emails the service sends, rendered from plain-text and HTML templates.

Templates live in `app/templates/emails/` as `<name>.txt` and `<name>.html` and use
`string.Template` placeholders (`$name`). Every value is HTML-escaped in the HTML
variant, and tokens are percent-encoded before they go into a link, so neither a
user's name nor a token can change the markup or the URL. Control and format
characters in a value become spaces in both variants, so no value (a name the
database somehow holds with a newline) can add a line to the text.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from string import Template
from urllib.parse import quote

from app.core.email import EmailMessage
from app.core.text import single_line

WELCOME_SUBJECT = "Welcome!"
VERIFY_EMAIL_SUBJECT = "Confirm your email address"
RESET_EMAIL_SUBJECT = "Reset your password"


def render_welcome(to: str, name: str) -> EmailMessage:
    """The welcome email, sent on `user.created`.

    Args:
        to: The recipient address.
        name: How to greet the recipient (a blank name greets "there").

    Returns:
        The message, in plain text and HTML.
    """
    return _render("welcome", to, WELCOME_SUBJECT, {"name": _greeting(name)})


def render_verify_email(
    to: str, name: str, frontend_url: str, token: str, expires_minutes: int
) -> EmailMessage:
    """The email with the link that confirms the address.

    Args:
        to: The address to confirm.
        name: How to greet the recipient.
        frontend_url: `FRONTEND_URL`; the link is `<frontend_url>/verify-email?token=...`.
        token: The raw single-use token (only its hash is stored).
        expires_minutes: How long the token is valid, for the text.

    Returns:
        The message, in plain text and HTML, both containing the link.
    """
    return _render_link_email(
        "verify_email",
        VERIFY_EMAIL_SUBJECT,
        to,
        name,
        _link(frontend_url, "verify-email", token),
        expires_minutes,
    )


def render_password_reset(
    to: str, name: str, frontend_url: str, token: str, expires_minutes: int
) -> EmailMessage:
    """The email with the link that lets the recipient choose a new password.

    Args:
        to: The account's address.
        name: How to greet the recipient.
        frontend_url: `FRONTEND_URL`; the link is `<frontend_url>/reset-password?token=...`.
        token: The raw single-use token (only its hash is stored).
        expires_minutes: How long the token is valid, for the text.

    Returns:
        The message, in plain text and HTML, both containing the link.
    """
    return _render_link_email(
        "password_reset",
        RESET_EMAIL_SUBJECT,
        to,
        name,
        _link(frontend_url, "reset-password", token),
        expires_minutes,
    )


def _render_link_email(
    template: str, subject: str, to: str, name: str, link: str, expires_minutes: int
) -> EmailMessage:
    values = {
        "name": _greeting(name),
        "link": link,
        "expires_minutes": str(expires_minutes),
    }
    return _render(template, to, subject, values)


def _render(
    template: str, to: str, subject: str, values: Mapping[str, str]
) -> EmailMessage:
    lines = {key: single_line(value) for key, value in values.items()}
    escaped = {key: html.escape(value) for key, value in lines.items()}
    # substitute (not safe_substitute): a misspelt placeholder fails loudly in tests.
    return EmailMessage(
        to=to,
        subject=subject,
        text=_template(f"{template}.txt").substitute(lines),
        html=_template(f"{template}.html").substitute(escaped),
    )


def _link(frontend_url: str, path: str, token: str) -> str:
    return f"{frontend_url.rstrip('/')}/{path}?token={quote(token, safe='')}"


def _greeting(name: str) -> str:
    return name.strip() or "there"


@cache
def _template(file_name: str) -> Template:
    source = files("app") / "templates" / "emails" / file_name
    return Template(source.read_text(encoding="utf-8"))
