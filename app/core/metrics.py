"""Prometheus metrics of this process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "http_requests_total", "HTTP requests", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DB_POOL_CHECKED_OUT = Gauge(
    "db_pool_connections_in_use", "Pooled DB connections in use"
)
DB_POOL_SIZE = Gauge("db_pool_connections_open", "Pooled DB connections open")
OUTBOX_BACKLOG = Gauge("outbox_backlog_events", "Events not yet published")
OUTBOX_OLDEST_AGE = Gauge(
    "outbox_oldest_event_age_seconds", "Age of the oldest unpublished event"
)
OUTBOX_DEAD = Gauge("outbox_dead_events", "Events the relay gave up on")
EVENTS_HANDLED = Counter(
    "events_handled_total", "Events handled", ["event_type", "handler"]
)
EVENTS_FAILED = Counter(
    "events_failed_total", "Event handling failures", ["event_type", "handler"]
)
EVENTS_DEAD_LETTERED = Counter(
    "events_dead_lettered_total",
    "Events moved to the dead-letter stream",
    ["event_type"],
)
EMAILS_SENT = Counter("emails_sent_total", "Emails sent", ["template"])
EMAILS_FAILED = Counter(
    "emails_failed_total", "Emails that could not be sent", ["template"]
)
CIRCUIT_OPEN = Gauge(
    "email_circuit_breaker_open",
    "1 while the mail circuit breaker is open (or half-open)",
)
RATE_LIMITED = Counter(
    "rate_limited_total", "Requests refused by a rate limit", ["limit"]
)
ROWS_PRUNED = Counter(
    "housekeeping_rows_deleted_total", "Ended rows deleted by housekeeping", ["table"]
)
