"""Property-based API testing against the app's own OpenAPI document.

A real server process (uvicorn, SQLite) is fuzzed with requests generated from
the schema, authenticated as an admin, under every check schemathesis has: no
answer may be a 5xx, every answer must match what the document says (status
codes, content types, headers, schemas), invalid requests must be refused and
valid ones accepted, and a protected route must refuse missing credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from tests.e2e.test_server import free_port, wait_until_up

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # starts a server process
ADMIN_PASSWORD = "Fuzz-Admin-Pass-1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    database = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "LOGIN_IP_MAX_FAILURES": "100000",
        "RATE_LIMIT_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    for command in (
        ["migrate"],
        [
            "create-superuser",
            "--email",
            "fuzz@example.com",
            "--username",
            "fuzzadmin",
            "--password",
            ADMIN_PASSWORD,
        ],
    ):
        subprocess.run(
            [sys.executable, "-m", "app", *command],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def admin_token(base: str) -> str:
    response = httpx.post(
        f"{base}/api/v1/auth/login",
        data={"username": "fuzzadmin", "password": ADMIN_PASSWORD},
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


# Every check schemathesis has (`--checks all`). Each request runs all of them
# except where a reason below says one cannot apply.
ALL_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.positive_data_acceptance,
    checks.missing_required_header,
    checks.unsupported_method,
    checks.allow_header_conformance,
    checks.use_after_free,
    checks.ensure_resource_availability,
    checks.ignored_auth,
]
# Rules JSON Schema cannot state, so a schema-valid body is rightly a 422 (or
# 400): a password and its confirmation must match and contain upper, lower and
# a digit; an emailed token cannot be guessed; names refuse Unicode control and
# format characters (Cc, Cf), which no regex dialect JSON Schema tools share can
# name (the fields' descriptions say so).
RULES_BEYOND_THE_SCHEMA = {
    "PATCH /api/v1/users/me",
    "PATCH /api/v1/users/{user_id}",
    "POST /api/v1/auth/signup",
    "POST /api/v1/users",
    "POST /api/v1/users/me/password",
    "POST /api/v1/auth/password-reset/confirm",
    "POST /api/v1/auth/verify-email/confirm",
    "POST /api/v1/auth/refresh",
    # email-validator also limits the local part (64) and the domain's labels.
    "POST /api/v1/auth/password-reset/request",
    "POST /api/v1/auth/verify-email/request",
}


def _label(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


def _without_server_state(case: schemathesis.Case) -> None:
    """A valid request, not one naming state the server never issued.

    A `cursor` is an opaque value from a previous page, an `If-Match` names a
    version the client read, and an `Idempotency-Key` reused with another body
    is refused by design: generated ones would be rightful 412s and 422s under
    positive-data acceptance.
    """
    if case.query is not None:
        case.query.pop("cursor", None)
    if case.headers is not None:
        case.headers.pop("If-Match", None)  # an ETag the server never sent: 412
        if "Idempotency-Key" in case.headers:
            case.headers["Idempotency-Key"] = uuid.uuid4().hex


def fuzz(operation: Any, server: str, token: str, mode: GenerationMode) -> None:
    """Run up to 20 generated requests (valid or invalid) against one operation."""
    # Logging out or revoking a session would revoke the shared token: those
    # cases get their own.
    own_token = operation.path.endswith(("/logout", "/logout-all")) or (
        operation.path.startswith("/api/v1/auth/sessions/")
    )
    excluded = []
    if _label(operation) in RULES_BEYOND_THE_SCHEMA:
        excluded.append(checks.positive_data_acceptance)

    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        credential = admin_token(server) if own_token else token
        if mode is GenerationMode.POSITIVE:
            # No column can hold a NUL, so every text field refuses it (422);
            # the document does not repeat that on each string.
            if isinstance(case.body, dict | list):
                assume("\\u0000" not in json.dumps(case.body))
            _without_server_state(case)
        case.call_and_validate(
            headers={"Authorization": f"Bearer {credential}"},
            checks=ALL_CHECKS,
            excluded_checks=excluded,
        )

    try:
        check()
    except Unsatisfiable:
        # An operation without inputs (POST /auth/logout) has nothing to get wrong.
        if mode is not GenerationMode.NEGATIVE:
            raise


def test_api_conforms_to_its_schema(server: str) -> None:
    api = schemathesis.openapi.from_url(f"{server}/api/v1/openapi.json")
    token = admin_token(server)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, server, token, mode)
