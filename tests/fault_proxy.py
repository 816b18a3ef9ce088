"""A TCP proxy on loopback that a test can stall or cut, to fault a real server.

Stalling holds every byte in the proxy, in both directions, as a `SIGSTOP`ped
server would: nothing is answered, and on resume the queued commands run,
except those of a client that gave up and closed its connection meanwhile
(as after an abortive close: the hardest case, a command that is lost). Cutting closes every connection and refuses
new ones, as a server that went away would; `accept` brings it back on the same
port, with whatever data the server behind it still has.
"""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a target until told otherwise."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen (on a free port the first time, the same one afterwards)."""
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def stall(self) -> None:
        """Hold every byte until `resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        """Deliver what was held, and flow again."""
        self._flowing.set()

    async def cut(self) -> None:
        """Close every connection and refuse new ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def accept(self) -> None:
        """Listen again on the same port."""
        await self.start()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))
        await asyncio.gather(
            self._pump(client_reader, server_writer, client_writer),
            self._pump(server_reader, client_writer, server_writer),
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: asyncio.StreamWriter,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if source.transport.is_closing():
                    break  # its sender went away while held: the bytes are lost
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)
