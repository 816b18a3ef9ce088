"""The Python load generator, used only when wrk is not installed.

`python -m bench.loadgen SPEC.json` runs one `LoadSpec` (keep-alive HTTP/1.1
connections, closed loop like wrk) and prints a `RunResult` as JSON. It runs in
its own process so it does not share an event loop with the runner's probes.
It is much slower than wrk: on a small machine it can become the bottleneck,
which the report says.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from bench.spec import LoadSpec, RunResult, percentile

Response = tuple[int, dict[str, str], bytes]
OnSuccess = Callable[[dict[str, str], bytes], None] | None


class _State:
    """Counters and request pools shared by every connection of one run."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        parts = urlsplit(spec.base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.socket_errors: Counter[str] = Counter()
        self.stopped = False
        self.counter = itertools.count(1)
        self.bodies = itertools.cycle(spec.bodies or [spec.body or ""])
        self.items: deque[list[object]] = deque(spec.items)
        self.tokens: deque[str] = deque(spec.tokens)

    def encode(self, path: str, body: str | None, extra: dict[str, str]) -> bytes:
        """A complete HTTP/1.1 request."""
        payload = (body or "").encode()
        lines = [f"{self.spec.method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in self.spec.headers.items()]
        lines += [f"{name}: {value}" for name, value in extra.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload

    def next_request(self) -> tuple[bytes, OnSuccess]:
        """The next request of this run and what to do with its 2xx answer."""
        kind = self.spec.kind
        if kind == "rotate":
            return self.encode(self.spec.path, next(self.bodies), {}), None
        if kind == "patch_pool":
            return self._next_patch()
        if kind == "refresh_pool":
            return self._next_refresh()
        return self.encode(self.spec.path, self.spec.body, {}), None

    def _next_patch(self) -> tuple[bytes, OnSuccess]:
        if not self.items:  # pool exhausted by earlier failures: fails visibly
            return self.encode(self.spec.path.replace("{id}", "0"), "{}", {}), None
        item_id, etag = self.items.popleft()
        body = (self.spec.body or "").replace("{n}", str(next(self.counter)))
        path = self.spec.path.replace("{id}", str(item_id))

        def put_back(headers: dict[str, str], _body: bytes) -> None:
            self.items.append([item_id, headers.get("etag", etag)])

        return self.encode(path, body, {"If-Match": str(etag)}), put_back

    def _next_refresh(self) -> tuple[bytes, OnSuccess]:
        token = self.tokens.popleft() if self.tokens else "pool-exhausted"
        body = (self.spec.body or "").replace("{token}", token)

        def put_back(_headers: dict[str, str], answer: bytes) -> None:
            self.tokens.append(orjson.loads(answer)["refresh_token"])

        return self.encode(self.spec.path, body, {}), put_back

    def result(self, seconds: float) -> RunResult:
        """The run's `RunResult`."""
        latencies = sorted(self.latencies)
        non_2xx = sum(
            n for code, n in self.statuses.items() if not code.startswith("2")
        )
        return RunResult(
            requests=len(latencies),
            seconds=seconds,
            p50_ms=percentile(latencies, 0.50) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
            non_2xx=non_2xx,
            statuses=dict(self.statuses),
            socket_errors=dict(self.socket_errors),
        )


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size + 2)
        del body[-2:]


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one HTTP/1.1 response: status, lower-cased headers, body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = b""
    return status, headers, body


async def _exchange(
    state: _State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Send one request and read its answer; False when the connection broke."""
    request, on_success = state.next_request()
    started = time.perf_counter()
    try:
        writer.write(request)
        await writer.drain()
    except OSError:
        state.socket_errors["write"] += 1
        return False
    try:
        status, headers, body = await asyncio.wait_for(
            read_response(reader), state.spec.timeout
        )
    except TimeoutError:
        state.socket_errors["timeout"] += 1
        return False
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        state.socket_errors["read"] += 1
        return False
    if state.stopped:
        return False
    state.latencies.append(time.perf_counter() - started)
    state.statuses[str(status)] += 1
    if 200 <= status < 300 and on_success is not None:
        on_success(headers, body)
    return headers.get("connection", "").lower() != "close"


async def _connection(state: _State) -> None:
    """One keep-alive connection sending requests back to back until stopped."""
    while not state.stopped:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(state.host, state.port), state.spec.timeout
            )
        except (OSError, TimeoutError):
            state.socket_errors["connect"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            while not state.stopped and await _exchange(state, reader, writer):
                pass
        finally:
            writer.close()


async def run(spec: LoadSpec) -> RunResult:
    """Run `spec` for its duration and return what it measured.

    Args:
        spec: The run to perform.

    Returns:
        Completed requests, latency percentiles, status counts and socket errors.
    """
    state = _State(spec)
    tasks = [asyncio.create_task(_connection(state)) for _ in range(spec.connections)]
    started = time.perf_counter()
    await asyncio.sleep(spec.duration)
    state.stopped = True
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await task
    return state.result(elapsed)


def main(argv: list[str]) -> int:
    """Run the spec file named in `argv` and print its result as JSON."""
    spec = LoadSpec.from_dict(orjson.loads(Path(argv[0]).read_bytes()))
    try:
        import uvloop

        result = uvloop.run(run(spec))
    except ImportError:
        result = asyncio.run(run(spec))
    sys.stdout.write(orjson.dumps(result.to_dict()).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
