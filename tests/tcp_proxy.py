"""A real TCP proxy for fault injection: put it between the gateway and Postgres (or a broker),
then ``await proxy.cut()`` to drop every connection and refuse new ones, ``await proxy.restore()``
to accept again on the same port; ``freeze()`` keeps every connection open but passes nothing on,
as a hung server would, until ``thaw()``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, unix_path: str | None = None) -> None:
        self.target = (target_host, target_port)
        self.unix_path = unix_path
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._gates: list[asyncio.Event] = []  # one per connection: stall() holds those open now

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.unix_path:
                up_r, up_w = await asyncio.open_unix_connection(self.unix_path)
            else:
                up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}
        gate = asyncio.Event()
        gate.set()
        self._gates.append(gate)
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.create_task(self._pipe(src, dst, gate))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                await gate.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    async def cut(self) -> None:
        """Refuse new connections and reset the live ones, as a crashed server would."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.reset()

    async def reset(self) -> None:
        """Reset the live connections; new ones are still let through."""
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()
        self._gates.clear()
        for t in list(self._pipes):
            t.cancel()

    def stall(self) -> None:
        """Hang the connections open now (open, nothing passes either way, as with a hung
        server); later connections pass freely."""
        for gate in self._gates:
            gate.clear()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()


def proxied_database_url(url: str) -> tuple[TcpProxy, Callable[[int], str]]:
    """A proxy in front of the database of ``url``, and the URL through it once it has a port."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    user = parts.username or "postgres"
    if "host" in query:  # Unix socket (embedded Postgres)
        sock_dir = query["host"][0]
        proxy = TcpProxy("", 0, unix_path=f"{sock_dir}/.s.PGSQL.{parts.port or 5432}")
    else:
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    path = parts.path

    def url_for(port: int) -> str:
        return f"postgresql+asyncpg://{user}@127.0.0.1:{port}{path}"

    return proxy, url_for
