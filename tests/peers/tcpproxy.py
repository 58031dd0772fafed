"""A TCP proxy that can go silent: a network cut that neither end is told about.

    proxy = TCPProxy("127.0.0.1", 5432)
    port = await proxy.start()      # connect to 127.0.0.1:port instead
    proxy.freeze()                  # bytes stop flowing both ways; sockets stay open
    proxy.cut(refuse=True)          # every connection closed, new ones closed at once
    proxy.allow()                   # new connections go through again
    await proxy.stop()

Used to show that a client notices a half-open connection by itself, and to play a
database restart (cut, refuse for a while, allow) without touching the server.
"""

from __future__ import annotations

import asyncio
import contextlib


class TCPProxy:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._refusing = False
        self.accepted = 0  # connections passed through
        self.refused = 0  # connections closed at once while refusing

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def freeze(self) -> None:
        self._frozen.set()

    def cut(self, *, refuse: bool = False) -> int:
        """Close every connection now (both ends see the socket close, as when the
        server restarts); with ``refuse``, close new ones at once until ``allow``.
        Returns how many connections were cut."""
        self._refusing = refuse
        writers, self._writers = self._writers, []
        for w in writers:
            w.transport.abort()
        return len(writers) // 2

    def allow(self) -> None:
        self._refusing = False

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._writers:
            w.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            client_w.transport.abort()
            return
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        self.accepted += 1
        self._writers += [client_w, server_w]
        for r, w in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.ensure_future(self._pipe(r, w))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await r.read(65536):
                if self._frozen.is_set():
                    await asyncio.Event().wait()  # swallow everything from now on
                w.write(data)
                await w.drain()
        # one end closed (or died: a killed process's sockets are closed by its kernel):
        # the other end is told, as it would be without a proxy in between
        w.close()
