"""Email templates: values escaped in HTML, tokens encoded in links."""

from __future__ import annotations

from collections.abc import Callable
from string import Template

import pytest

from app.core.email import EmailMessage
from app.core.email_templates import (
    _template,
    render_password_reset,
    render_verify_email,
    render_welcome,
)

TOKEN = "a+b/c=d&e f?#%"
ENCODED_TOKEN = "a%2Bb%2Fc%3Dd%26e%20f%3F%23%25"
HOSTILE_NAME = '<script>alert("x")</script> & Co'

LinkRenderer = Callable[[str, str, str, str, int], EmailMessage]


def test_welcome_greets_the_user_in_both_parts() -> None:
    message = render_welcome("ada@example.org", "Ada")

    assert message.to == "ada@example.org"
    assert message.subject == "Welcome!"
    assert "Hi Ada," in message.text
    assert "<p>Hi Ada,</p>" in message.html
    assert "$" not in message.text + message.html


def test_a_blank_name_greets_there() -> None:
    message = render_welcome("ada@example.org", "  ")
    assert "Hi there," in message.text
    assert "Hi there," in message.html


def test_welcome_escapes_the_name_in_html_only() -> None:
    message = render_welcome("ada@example.org", HOSTILE_NAME)

    assert "<script>" not in message.html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in message.html
    assert HOSTILE_NAME in message.text  # text/plain is not markup


@pytest.mark.parametrize(
    ("render", "path", "subject"),
    [
        (render_verify_email, "verify-email", "Confirm your email address"),
        (render_password_reset, "reset-password", "Reset your password"),
    ],
)
def test_link_emails_carry_the_encoded_token_in_both_parts(
    render: LinkRenderer, path: str, subject: str
) -> None:
    message = render(
        "ada@example.org", HOSTILE_NAME, "https://app.example.com/", TOKEN, 45
    )

    link = f"https://app.example.com/{path}?token={ENCODED_TOKEN}"
    assert message.subject == subject
    assert link in message.text
    assert f'<a href="{link}">' in message.html
    assert message.html.count(link) == 2  # the button and the copyable text
    assert TOKEN not in message.text + message.html
    assert "45 minutes" in message.text
    assert "45\n      minutes" in message.html
    assert "<script>" not in message.html
    assert "$" not in message.text + message.html


FORGED = "there,\n\nSECURITY ALERT: confirm at http://evil.example\r\n\u2028\u202e"


@pytest.mark.parametrize(
    "render",
    [
        lambda name: render_welcome("ada@example.org", name),
        lambda name: render_verify_email(
            "ada@example.org", name, "https://app.example.com", "tok", 60
        ),
        lambda name: render_password_reset(
            "ada@example.org", name, "https://app.example.com", "tok", 60
        ),
    ],
    ids=["welcome", "verify", "reset"],
)
def test_a_name_with_line_breaks_adds_no_line(
    render: Callable[[str], EmailMessage],
) -> None:
    plain = render("Ada")
    forged = render(FORGED)

    assert len(forged.text.splitlines()) == len(plain.text.splitlines())
    assert len(forged.html.splitlines()) == len(plain.html.splitlines())
    [greeting] = [line for line in forged.text.splitlines() if "SECURITY" in line]
    assert greeting.startswith("Hi there,")
    assert "\u202e" not in forged.text + forged.html


def test_html_special_characters_in_the_frontend_url_are_escaped() -> None:
    message = render_verify_email(
        "ada@example.org", "Ada", 'https://app.example.com/?x=1&y="2"', "tok", 60
    )

    escaped_base = "https://app.example.com/?x=1&amp;y=&quot;2&quot;"
    assert f'href="{escaped_base}/verify-email?token=tok"' in message.html
    assert 'https://app.example.com/?x=1&y="2"/verify-email?token=tok' in message.text


@pytest.mark.parametrize(
    "name",
    [
        "welcome.txt",
        "welcome.html",
        "verify_email.txt",
        "verify_email.html",
        "password_reset.txt",
        "password_reset.html",
    ],
)
def test_every_template_is_packaged_and_well_formed(name: str) -> None:
    template = _template(name)
    assert isinstance(template, Template)
    assert template.is_valid()
