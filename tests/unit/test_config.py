"""Settings: parsing, and production's refusal of weak secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import DEV_SECRET_KEY, Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "secret", [DEV_SECRET_KEY, "changeme", "your-secret-key", "x" * 31, "  "]
)
def test_production_refuses_weak_or_default_secret(secret: str) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        settings(ENVIRONMENT="production", SECRET_KEY=secret)


def test_production_refuses_missing_secret() -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        settings(ENVIRONMENT="production")


STRONG_SECRET = "k" * 16 + "Q9" * 8


def test_production_accepts_long_random_secret() -> None:
    value = settings(
        ENVIRONMENT="production", SECRET_KEY=STRONG_SECRET, METRICS_TOKEN="m" * 32
    )
    assert value.ENVIRONMENT == "production"


@pytest.mark.parametrize("token", [None, "", "  ", "changeme", "secret"])
def test_production_refuses_metrics_without_a_real_token(token: str | None) -> None:
    extra = {} if token is None else {"METRICS_TOKEN": token}
    with pytest.raises(ValidationError, match="METRICS_TOKEN"):
        settings(ENVIRONMENT="production", SECRET_KEY=STRONG_SECRET, **extra)


def test_production_without_metrics_needs_no_metrics_token() -> None:
    value = settings(
        ENVIRONMENT="production", SECRET_KEY=STRONG_SECRET, METRICS_ENABLED=False
    )
    assert value.METRICS_TOKEN is None


def test_an_empty_metrics_token_is_no_token() -> None:
    # `.env.example` has `METRICS_TOKEN=`: that must not be a token "" that an
    # empty bearer would match.
    assert settings(METRICS_TOKEN="").METRICS_TOKEN is None


@pytest.mark.parametrize(
    ("environment", "docs", "enabled"),
    [
        ("development", None, True),
        ("development", "", True),
        ("development", "false", False),
        ("test", None, True),
        ("production", None, False),
        ("production", "", False),
        ("production", "true", True),
    ],
)
def test_docs_are_on_except_in_production_unless_set(
    environment: str, docs: str | None, enabled: bool
) -> None:
    extra = {} if docs is None else {"DOCS_ENABLED": docs}
    value = settings(
        ENVIRONMENT=environment,
        SECRET_KEY=STRONG_SECRET,
        METRICS_TOKEN="m" * 32,
        **extra,
    )
    assert value.docs_enabled is enabled


def test_development_tolerates_the_dev_default() -> None:
    assert settings().SECRET_KEY.get_secret_value() == DEV_SECRET_KEY


def test_secret_is_hidden_in_repr() -> None:
    assert "dev-insecure" not in repr(settings())


def test_cors_origins_from_comma_separated_string() -> None:
    value = settings(BACKEND_CORS_ORIGINS="https://a.example, https://b.example/")
    assert value.BACKEND_CORS_ORIGINS == ["https://a.example", "https://b.example"]


def test_cors_wildcard_is_refused() -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        settings(BACKEND_CORS_ORIGINS="*")


@pytest.mark.parametrize(
    "url", ["postgresql://u@h/db", "sqlite:///x.db", "mysql+aiomysql://u@h/db"]
)
def test_only_async_drivers_are_accepted(url: str) -> None:
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        settings(DATABASE_URL=url)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite+aiosqlite:///./data/app.db", Path("data/app.db")),
        ("sqlite+aiosqlite:///:memory:", None),
        ("postgresql+asyncpg://u@h/db", None),
    ],
)
def test_sqlite_path(url: str, path: Path | None) -> None:
    assert settings(DATABASE_URL=url).sqlite_path == path


def test_env_example_lists_every_setting_with_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    example = Path(__file__).resolve().parents[2] / ".env.example"
    listed = {}
    for line in example.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            listed[key] = value
    assert set(listed) == set(Settings.model_fields)
    defaults = settings()
    for key, value in listed.items():
        assert as_env_text(getattr(defaults, key), value) == value, key


def as_env_text(default: object, listed: str) -> str:
    """How a default reads in `.env.example` (floats compare numerically)."""
    if hasattr(default, "get_secret_value"):
        return str(default.get_secret_value())
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list):
        return ",".join(default)
    if isinstance(default, float) and float(listed) == default:
        return listed
    return "" if default is None else str(default)


@pytest.mark.parametrize(
    "name", ["PASSWORD_RESET_EMAIL_LIMIT", "VERIFICATION_EMAIL_LIMIT"]
)
def test_email_limits_must_be_rates(name: str) -> None:
    assert settings(**{name: "5 per hour"})
    with pytest.raises(ValidationError, match=name):
        settings(**{name: "often"})
