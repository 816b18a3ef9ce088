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


def wait_until_up(base: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not start")


def test_server_serves_and_stops_gracefully(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'srv.db'}",
    }
    env.pop("REDIS_URL", None)
    subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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
