"""A TCP forwarder on a loopback port that a test can cut and restore: a real outage.

It runs its own event loop in a thread, so it serves an app in the test's
loop and a server in another process alike. `cut()` resets every open link
and stops listening (new connections are refused, as from a stopped server);
`restore()` listens on the same port again.

`stall()` holds every byte in the proxy, both ways, as a `SIGSTOP`ped server
would: nothing is answered, and after `resume()` what was queued goes on,
except what a client sent before it gave up and closed its link (lost, as
after an abortive close: the hardest case for a command that must land).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

_LINGER_ZERO = struct.pack("ii", 1, 0)  # close with RST: the peer sees a reset


def free_port() -> int:
    """A loopback port nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target`, until `cut()`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()  # used in the proxy's own loop only
        self._flowing.set()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def start(self) -> None:
        """Start the thread and listen."""
        self._thread.start()
        self.restore()

    def restore(self) -> None:
        """Listen (again) on `port`."""
        self._call(self._listen())

    def cut(self) -> None:
        """Reset every open link and refuse new ones."""
        self._call(self._cut())

    def stall(self) -> None:
        """Hold every byte until `resume`."""
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        """Deliver what is held (but from links closed meanwhile), and flow again."""
        self._call(self._set_flowing(True))

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def close(self) -> None:
        """Cut and stop the thread."""
        self.resume()
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._link, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._links):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            writer.transport.abort()
        self._links.clear()

    async def _link(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(
            self._pump(reader, up_writer, writer),
            self._pump(up_reader, writer, up_writer),
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sender: asyncio.StreamWriter,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()  # held while stalled
                if sender.transport.is_closing():
                    break  # its sender gave up while it was held: lost
                writer.write(data)
                await writer.drain()
        self._links.discard(writer)
        writer.close()


@contextmanager
def tcp_proxy(target_host: str, target_port: int) -> Iterator[TcpProxy]:
    """A started `TcpProxy`, closed at the end of the block."""
    proxy = TcpProxy(target_host, target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
