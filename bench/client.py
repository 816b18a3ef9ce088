"""A tiny stdlib HTTP client for setting a run up, and the `/health` side probe."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import orjson

from bench.spec import percentile


@dataclass(frozen=True)
class Answer:
    """One HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        """The body parsed as JSON."""
        return orjson.loads(self.body)


class HttpError(RuntimeError):
    """A setup request got an unexpected answer."""


class Client:
    """Sequential requests on one keep-alive connection (setup work only)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        """Connect lazily to `base_url` (http://host:port)."""
        parts = urlsplit(base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        """Send one request and read the whole answer (reconnects once if needed)."""
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            try:
                self._connection.request(method, path, body=body, headers=headers or {})
                response = self._connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            answer_headers = {
                name.lower(): value for name, value in response.getheaders()
            }
            return Answer(response.status, answer_headers, data)
        raise AssertionError("unreachable")

    def expect(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        """Like `request`, but a non-2xx answer raises `HttpError`."""
        answer = self.request(method, path, headers=headers, body=body)
        if not 200 <= answer.status < 300:
            raise HttpError(
                f"{method} {path} answered {answer.status}: {answer.body[:500]!r}"
            )
        return answer

    def login(self, username: str, password: str) -> dict[str, object]:
        """Log in with the password grant; returns the token response."""
        form = urlencode({"username": username, "password": password}).encode()
        answer = self.expect(
            "POST",
            "/api/v1/auth/login",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=form,
        )
        data = answer.json()
        assert isinstance(data, dict)
        return data

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def wait_until_healthy(
    base_url: str, alive: Callable[[], bool], timeout: float = 60.0
) -> None:
    """Poll `GET /health` until it answers 200.

    Args:
        base_url: The server.
        alive: A callable returning False once the server process has exited.
        timeout: Seconds to wait.

    Raises:
        RuntimeError: The server exited or did not become healthy in time.
    """
    deadline = time.monotonic() + timeout
    client = Client(base_url, timeout=2.0)
    try:
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"the server at {base_url} exited during start-up")
            try:
                if client.request("GET", "/health").status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"the server at {base_url} did not become healthy in {timeout}s")


@dataclass
class ProbeResult:
    """What the side probe saw."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def p(self, fraction: float) -> float:
        """A latency percentile in milliseconds."""
        return percentile(sorted(self.latencies), fraction) * 1000


class HealthProbe:
    """Send `GET /health` every `interval` seconds from a thread, timing each."""

    def __init__(self, base_url: str, interval: float = 0.02) -> None:
        """Prepare a probe of `base_url` (not started)."""
        self._client = Client(base_url, timeout=10.0)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.result = ProbeResult()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                ok = self._client.request("GET", "/health").status == 200
            except (OSError, http.client.HTTPException):
                ok = False
            if ok:
                self.result.latencies.append(time.perf_counter() - started)
            else:
                self.result.errors += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> HealthProbe:
        """Start probing."""
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        """Stop probing."""
        self._stop.set()
        self._thread.join(timeout=15)
        self._client.close()
