"""A real server process: starts, serves, shuts down gracefully on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # starts server processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until_up(
    base: str, process: subprocess.Popen[str], timeout: float = 90
) -> None:
    # Generous: a loaded two-core machine has taken over 30 s to start three.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not start")


def migrate_and_serve(
    env: dict[str, str], cwd: Path, port: int
) -> subprocess.Popen[str]:
    """Migrate, then start `python -m app serve` on `port` (output captured)."""
    subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_server_serves_and_stops_gracefully(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'srv.db'}",
    }
    env.pop("REDIS_URL", None)
    process = migrate_and_serve(env, ROOT, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process)
        ready = httpx.get(f"{base}/ready")
        docs = httpx.get(f"{base}/docs")
        missing = httpx.get(f"{base}/nope")
        signup = httpx.post(
            f"{base}/api/v1/auth/signup",
            content=b"{",
            headers={"content-type": "application/json"},
        )
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)

    assert ready.status_code == 200
    assert docs.status_code == 200
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    assert signup.json()["error"]["code"] == "MALFORMED_JSON"
    # uvicorn re-raises SIGTERM after a clean shutdown, so -15 is a clean exit too.
    assert process.returncode in (0, -signal.SIGTERM)
    assert f"API docs: {base}/docs" in output
    assert '"logger":"app","message":"shutdown complete"' in output
    assert '"logger":"app.access"' in output
    assert "uvicorn.access" not in output


def _session_ip_behind_proxy(tmp_path: Path, trusted: str) -> str:
    """Serve with FORWARDED_ALLOW_IPS=trusted; log in "via a proxy"; the session's IP."""
    port = free_port()
    # From a `.env` file, as a deployment would set it: uvicorn itself reads
    # only the process environment, so this goes through the service's settings.
    workdir = tmp_path / trusted
    workdir.mkdir()
    (workdir / ".env").write_text(f"FORWARDED_ALLOW_IPS={trusted}\n")
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'proxy.db'}",
        "PYTHONPATH": str(ROOT),
    }
    for name in ("REDIS_URL", "FORWARDED_ALLOW_IPS"):
        env.pop(name, None)
    process = migrate_and_serve(env, workdir, port)
    base = f"http://127.0.0.1:{port}/api/v1"
    password = "Proxied-Passw0rd"
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    try:
        wait_until_up(base.removesuffix("/api/v1"), process)
        user = {"email": f"p{port}@example.com", "username": f"p{port}"}
        user |= {"password": password, "confirm_password": password}
        user |= {"first_name": "Pro", "last_name": "Xy"}
        assert httpx.post(f"{base}/auth/signup", json=user).status_code == 201
        tokens = httpx.post(
            f"{base}/auth/login",
            data={"username": user["username"], "password": password},
            headers=forwarded,
        ).json()
        sessions = httpx.get(
            f"{base}/auth/sessions",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    ip: str = sessions.json()["data"][0]["ip_address"]
    return ip


def test_client_ip_comes_from_trusted_proxies_only(tmp_path: Path) -> None:
    # The test client is 127.0.0.1: as the trusted proxy its header is believed...
    assert _session_ip_behind_proxy(tmp_path, "127.0.0.1") == "203.0.113.9"
    # ...as any other peer, the header is ignored (a client cannot pick its IP).
    assert _session_ip_behind_proxy(tmp_path, "192.0.2.1") == "127.0.0.1"


def test_serve_on_a_busy_port_fails_clearly_without_a_banner(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}",
    }
    env.pop("REDIS_URL", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "app", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "Serving" not in result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr


def test_head_health_over_http(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'head.db'}",
    }
    env.pop("REDIS_URL", None)
    process = migrate_and_serve(env, ROOT, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"HEAD /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            raw = b""
            while chunk := conn.recv(4096):
                raw += chunk
        ready = httpx.head(f"{base}/ready", timeout=10)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    assert body == b""
    assert ready.status_code == 200
    assert f"Serving fastapi-backend on {base}" in output


def test_a_forwarded_for_that_is_not_an_ip_is_the_peer(
    tmp_path: Path, database_url: str
) -> None:
    """Through uvicorn, from the default trusted proxy (127.0.0.1), on each backend.

    Both headers were stored as the client IP (SQLite) or a 500 (PostgreSQL:
    longer than the 45-character column), on login and on `POST /items`.
    """
    port = free_port()
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
        "RATE_LIMIT_ENABLED": "false",
    }
    for name in ("REDIS_URL", "FORWARDED_ALLOW_IPS"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=tmp_path,  # no `.env` of the developer's
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    password = "Forwarded-Passw0rd"
    user = {"email": f"f{port}@example.com", "username": f"f{port}"}
    user |= {"password": password, "confirm_password": password}
    user |= {"first_name": "For", "last_name": "Warded"}
    statuses = []
    try:
        wait_until_up(base.removesuffix("/api/v1"), process)
        assert httpx.post(f"{base}/auth/signup", json=user).status_code == 201
        for forwarded in ("not-an-ip", "1" * 46):
            headers = {"X-Forwarded-For": forwarded}
            login = httpx.post(
                f"{base}/auth/login",
                data={"username": user["username"], "password": password},
                headers=headers,
                timeout=10,
            )
            statuses.append(login.status_code)
            if login.status_code != 200:
                continue
            headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            created = httpx.post(
                f"{base}/items", json={"title": "t"}, headers=headers, timeout=10
            )
            statuses.append(created.status_code)
            sessions = httpx.get(f"{base}/auth/sessions", headers=headers, timeout=10)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert statuses == [200, 201, 200, 201]
    ips = {session["ip_address"] for session in sessions.json()["data"]}
    assert ips == {"127.0.0.1"}
