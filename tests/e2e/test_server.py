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

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until_up(
    base: str, process: subprocess.Popen[str], timeout: float = 30
) -> None:
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
