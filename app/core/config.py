"""Application settings, read once from the environment and `.env`."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from limits import parse
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Secrets that ship in docs, examples or earlier defaults. Production refuses them.
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "secret",
        "your-secret-key",
        "super-secret-key-123",
        "dev-insecure-secret-key-change-me-0123456789",
    }
)
# Development-only default; production refuses it (see _strong_secret_in_production).
DEV_SECRET_KEY = "dev-insecure-secret-key-change-me-0123456789"  # noqa: S105
MIN_SECRET_BYTES = 32

Environment = Literal["development", "test", "production"]


class Settings(BaseSettings):
    """Every setting of the service; `.env.example` lists them with their defaults."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True
    )

    ENVIRONMENT: Environment = "development"
    PROJECT_NAME: str = "fastapi-backend"
    VERSION: str = "0.1.0"
    API_V1_STR: str = "/api/v1"
    LOG_LEVEL: str = "INFO"

    SECRET_KEY: SecretStr = SecretStr(DEV_SECRET_KEY)
    JWT_ALGORITHM: Literal["HS256", "HS384", "HS512"] = "HS256"
    JWT_ISSUER: str = "fastapi-backend"
    JWT_AUDIENCE: str = "fastapi-backend-api"
    ACCESS_TOKEN_EXPIRE_MINUTES: int = Field(default=15, ge=1, le=1440)
    REFRESH_TOKEN_IDLE_TIMEOUT_MINUTES: int = Field(default=7 * 24 * 60, ge=1)
    REFRESH_TOKEN_ABSOLUTE_LIFETIME_DAYS: int = Field(default=30, ge=1)
    # A rotated refresh token presented again this soon (a retry whose answer
    # was lost, two tabs) gets its successor again instead of revoking the
    # family (RFC 9700 4.14.2); 0 turns the grace off.
    REFRESH_TOKEN_REUSE_GRACE_SECONDS: int = Field(default=20, ge=0, le=300)
    REFRESH_COOKIE_NAME: str = "refresh_token"
    CSRF_COOKIE_NAME: str = "csrf_token"
    CSRF_HEADER_NAME: str = "X-CSRF-Token"

    LOGIN_MAX_FAILURES: int = Field(default=5, ge=1)
    LOGIN_FAILURE_WINDOW_SECONDS: int = Field(default=900, ge=1)
    LOGIN_LOCKOUT_BASE_SECONDS: int = Field(default=60, ge=1)
    LOGIN_LOCKOUT_MAX_SECONDS: int = Field(default=900, ge=1)
    LOGIN_IP_MAX_FAILURES: int = Field(default=50, ge=1)

    PASSWORD_ARGON2_TIME_COST: int = Field(default=2, ge=1)
    PASSWORD_ARGON2_MEMORY_KIB: int = Field(default=19456, ge=1024)
    PASSWORD_ARGON2_PARALLELISM: int = Field(default=1, ge=1)
    # 0: one thread per CPU this process may use: its affinity mask, capped by
    # a container CPU quota (app/core/cpus.py). Hashing is CPU-bound.
    PASSWORD_HASH_THREADS: int = Field(default=0, ge=0)

    DATABASE_URL: str = "sqlite+aiosqlite:///./data/app.db"
    DB_POOL_SIZE: int = Field(default=10, ge=1)
    # 0: a fixed pool. Overflow connections close as soon as they come back to
    # a full pool and reopen on the next burst (a PostgreSQL process each).
    DB_MAX_OVERFLOW: int = Field(default=0, ge=0)
    DB_POOL_TIMEOUT_SECONDS: float = Field(default=30.0, gt=0)
    DB_POOL_RECYCLE_SECONDS: int = Field(default=3600, ge=-1)
    DB_POOL_PRE_PING: bool = True
    # Ping only connections idle this long (0: on every checkout).
    DB_POOL_PRE_PING_IDLE_SECONDS: float = Field(default=1.0, ge=0)
    DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: int = Field(default=300_000, ge=0)
    DB_ECHO: bool = False
    SQLITE_BUSY_TIMEOUT_MS: int = Field(default=5000, ge=0)

    REDIS_URL: str | None = None
    REDIS_KEY_PREFIX: str = "app:"
    EVENT_STREAM: str = "events"
    EVENT_DEAD_LETTER_STREAM: str = "events:dead"
    EVENT_CONSUMER_GROUP: str = "workers"
    EVENT_MAX_DELIVERIES: int = Field(default=5, ge=1)
    EVENT_RETRY_BASE_SECONDS: float = Field(default=1.0, gt=0)
    EVENT_HANDLER_TIMEOUT_SECONDS: float = Field(default=30.0, gt=0)
    # With Redis: an event published this long ago and not yet handled is
    # looked for in the stream (and again as often while it waits there); if
    # Redis lost it (restart without persistence, failover, eviction), it is
    # published again.
    EVENT_REDELIVER_CHECK_SECONDS: float = Field(default=60.0, gt=0)
    # With Redis: a safety cap on the stream's length (XADD MAXLEN ~). Trimming
    # follows the consumer groups, so a stale group would let the stream grow
    # until Redis refuses writes (limits, lockouts, cache too); past the cap the
    # oldest entries go, and those not yet handled are published again.
    EVENT_STREAM_MAX_LENGTH: int = Field(default=1_000_000, ge=100)
    OUTBOX_POLL_SECONDS: float = Field(default=0.5, gt=0)
    OUTBOX_BATCH_SIZE: int = Field(default=100, ge=1)
    OUTBOX_RELAY_ENABLED: bool = True

    SMTP_HOST: str = ""
    SMTP_PORT: int = Field(default=587, ge=1, le=65535)
    SMTP_USER: str | None = None
    SMTP_PASSWORD: SecretStr | None = None
    SMTP_TLS: bool = True
    SMTP_SSL: bool = False
    SMTP_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0)
    EMAILS_FROM_EMAIL: str = "noreply@example.com"
    EMAILS_FROM_NAME: str | None = None
    MAIL_DIR: str = "./data/mail"
    FRONTEND_URL: str = "http://localhost:3000"
    EMAIL_TOKEN_EXPIRE_MINUTES: int = Field(default=60, ge=1)

    RATE_LIMIT_ENABLED: bool = True
    RATE_LIMIT_AUTH: str = "20/minute"
    RATE_LIMIT_WRITES: str = "120/minute"
    # Link emails per recipient (anyone can ask for a reset): requests beyond
    # are answered as usual (202) and send nothing. Not switched off by
    # RATE_LIMIT_ENABLED.
    PASSWORD_RESET_EMAIL_LIMIT: str = "3/15 minutes"  # noqa: S105 - a rate
    VERIFICATION_EMAIL_LIMIT: str = "3/15 minutes"

    # How long one Redis command may take before Redis counts as down (the
    # callers then use their fallbacks for a few seconds).
    REDIS_SOCKET_TIMEOUT_SECONDS: float = Field(default=2.0, gt=0)
    # How long a checked user or live session is answered from the cache. It
    # also bounds a revocation while Redis fails: the revoking request waits
    # until it is confirmed or this long (+1 s), so every entry from before
    # it has expired (app/core/cache.py).
    AUTH_CACHE_TTL_SECONDS: float = Field(default=10.0, ge=0)
    METRICS_ENABLED: bool = True
    # `Authorization: Bearer <token>` for /metrics. Required in production while
    # metrics are on: pool use, backlogs and per-route traffic help an attacker
    # time an attack, and the API's port is public.
    METRICS_TOKEN: SecretStr | None = None
    # /docs, /redoc and /openapi.json. Unset: on, except in production, where
    # the full map of the API (every route, parameter and scope) and pages that
    # need a looser CSP (inline scripts) are served only if asked for.
    DOCS_ENABLED: bool | None = None

    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (by the app,
    # under any ASGI server; a forwarded value that is no IP is ignored):
    # the load balancer's addresses, comma-separated. Client IPs drive rate
    # limits, lockouts, sessions and the audit log: behind a proxy not listed
    # here every client is the proxy, and "*" lets any client choose its IP.
    FORWARDED_ALLOW_IPS: str = "127.0.0.1"
    BACKEND_CORS_ORIGINS: Annotated[list[str], NoDecode] = []
    MAX_REQUEST_BODY_BYTES: int = Field(default=1024 * 1024, ge=1024)
    READY_TIMEOUT_SECONDS: float = Field(default=2.0, gt=0)

    ATTACHMENT_MAX_BYTES: int = Field(default=10 * 1024 * 1024, ge=1)
    STORAGE_DIR: str = "./data/attachments"
    IDEMPOTENCY_TTL_HOURS: int = Field(default=24, ge=1)

    # Housekeeping: what has ended is deleted after it has been kept this long.
    PRUNE_INTERVAL_SECONDS: float = Field(default=3600.0, ge=0)
    PRUNE_BATCH_SIZE: int = Field(default=1000, ge=1)
    RETENTION_DAYS: int = Field(default=7, ge=0)
    PROCESSED_EVENT_RETENTION_DAYS: int = Field(default=30, ge=1)

    @field_validator("METRICS_TOKEN", "DOCS_ENABLED", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`METRICS_TOKEN=` or `DOCS_ENABLED=` (as in `.env.example`) mean unset."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("BACKEND_CORS_ORIGINS", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept a comma-separated string as well as a list."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("BACKEND_CORS_ORIGINS")
    @classmethod
    def _no_wildcard_origin(cls, value: list[str]) -> list[str]:
        """Refuse `*`: the API sends credentials, and `*` with credentials is unsafe."""
        if "*" in value:
            raise ValueError("'*' is not allowed; list the exact origins")
        return [origin.rstrip("/") for origin in value]

    @field_validator("PASSWORD_RESET_EMAIL_LIMIT", "VERIFICATION_EMAIL_LIMIT")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        """A `limits` string such as `3/15 minutes`, refused at start if malformed."""
        try:
            parse(value)
        except ValueError as exc:
            raise ValueError("must be a rate such as '3/15 minutes'") from exc
        return value

    @field_validator("DATABASE_URL")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        """Only the two async drivers the service is tested with are accepted."""
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return value

    @model_validator(mode="after")
    def _strong_secret_in_production(self) -> Settings:
        """Production must never run on a guessable signing key."""
        if self.ENVIRONMENT == "production":
            secret = self.SECRET_KEY.get_secret_value()
            if secret.strip().lower() in KNOWN_DEFAULT_SECRETS:
                raise ValueError(
                    "SECRET_KEY is missing or a known default; set a random value "
                    "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
                )
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes in production"
                )
        return self

    @model_validator(mode="after")
    def _metrics_token_in_production(self) -> Settings:
        """Production never serves /metrics to anyone who asks."""
        if self.ENVIRONMENT != "production" or not self.METRICS_ENABLED:
            return self
        token = self.METRICS_TOKEN.get_secret_value() if self.METRICS_TOKEN else ""
        if token.strip().lower() in KNOWN_DEFAULT_SECRETS:
            raise ValueError(
                "METRICS_TOKEN is missing or a known default; set a random value "
                "(Prometheus sends it as a bearer token) or METRICS_ENABLED=false"
            )
        return self

    @property
    def docs_enabled(self) -> bool:
        """Whether /docs, /redoc and /openapi.json are served (`DOCS_ENABLED`)."""
        if self.DOCS_ENABLED is None:
            return self.ENVIRONMENT != "production"
        return self.DOCS_ENABLED

    @property
    def refresh_idle_timeout(self) -> timedelta:
        """A session unused this long can no longer refresh (nor is it listed)."""
        return timedelta(minutes=self.REFRESH_TOKEN_IDLE_TIMEOUT_MINUTES)

    @property
    def idempotency_ttl(self) -> timedelta:
        """How long an `Idempotency-Key`'s first answer is replayed."""
        return timedelta(hours=self.IDEMPOTENCY_TTL_HOURS)

    @property
    def is_sqlite(self) -> bool:
        """True when the database is the embedded SQLite file."""
        return self.DATABASE_URL.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None for PostgreSQL and in-memory databases."""
        if not self.is_sqlite:
            return None
        path = self.DATABASE_URL.split("///", 1)[1].split("?", 1)[0]
        if not path or path == ":memory:":
            return None
        return Path(path)


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings, loaded on first use."""
    return Settings()
