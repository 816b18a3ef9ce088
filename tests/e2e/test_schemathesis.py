"""Property-based API testing against the app's own OpenAPI document.

A real server process (uvicorn, SQLite) is fuzzed with requests generated from
the schema, authenticated as an admin: no answer may be a 5xx, and every answer
must match what the document says (status codes, content types, schemas).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

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


def fuzz(operation: Any, server: str, token: str, mode: GenerationMode) -> None:
    """Run up to 20 generated requests (valid or invalid) against one operation."""
    # Logging out would revoke the shared token: those cases get their own.
    own_token = operation.path.endswith(("/logout", "/logout-all"))

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
        case.call_and_validate(
            headers={"Authorization": f"Bearer {credential}"},
            # Cross-field rules (password == confirmation, not the email, ...)
            # cannot be stated in JSON Schema, so a schema-valid body may rightly
            # be refused with a documented 422: that one check does not apply.
            excluded_checks=[positive_data_acceptance],
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
