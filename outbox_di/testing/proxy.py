"""A TCP proxy that a test can cut or hold silent: network faults between a process and a server.

:class:`FaultProxy` listens on a free port of 127.0.0.1 and forwards every connection to its
upstream ``host:port``, on an event loop of its own thread, so that a synchronous test or a
fault-injection script drives it with plain calls:

* :meth:`FaultProxy.cut` resets every open connection (an RST to both sides) and refuses new ones
  until :meth:`FaultProxy.restore`: a broker or database gone from the network;
* :meth:`FaultProxy.hold` keeps every connection open and forwards nothing, either way, while
  new connections are accepted and left silent: a network stall, which only timeouts and
  leases end;
* :meth:`FaultProxy.restore` forwards again (held bytes flow on; cut connections stay closed).

Used as ``with FaultProxy("127.0.0.1", 5432) as proxy: dsn = f"...:{proxy.port}/..."``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from types import TracebackType
from typing import Literal

Mode = Literal["forward", "cut", "hold"]

_CHUNK = 65536


class FaultProxy:
    """A TCP forwarder on ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._requested_port = port
        self._mode: Mode = "forward"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        """Connections accepted since start (refused ones not counted)."""

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen and forward; returns once the port is bound."""
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start within 10 s")
        return self

    def stop(self) -> None:
        """Close the listener and every connection."""
        loop = self._loop
        if loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        assert self._server is not None, "start() the proxy first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, for a client that takes ``host:port``."""
        return f"127.0.0.1:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    # -- faults -------------------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every connection and refuse new ones until :meth:`restore`."""
        self._switch("cut")

    def hold(self) -> None:
        """Forward nothing, keep connections open, accept new ones silently."""
        self._switch("hold")

    def restore(self) -> None:
        """Forward again."""
        self._switch("forward")

    def _switch(self, mode: Mode) -> None:
        loop = self._loop
        assert loop is not None, "start() the proxy first"

        async def apply() -> None:
            self._set_mode(mode)

        asyncio.run_coroutine_threadsafe(apply(), loop).result(10)

    def _set_mode(self, mode: Mode) -> None:
        assert self._flowing is not None
        self._mode = mode
        if mode == "forward":
            self._flowing.set()
            return
        self._flowing.clear()
        if mode == "cut":
            for writer in list(self._writers):
                _reset(writer)
            self._writers.clear()

    # -- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self._requested_port)
        )
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode == "cut":
            _reset(writer)
            return
        self.connections += 1
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            assert self._flowing is not None
            await self._flowing.wait()  # a connection made during a hold stays silent
            if self.mode == "cut":  # cut while it waited (the property: mypy narrowed _mode)
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop(): the connection task ends quietly (the stream's callback would report a
            # cancelled task as an error).
            pass
        finally:
            for stream in (writer, upstream_writer):
                if stream is not None:
                    self._writers.discard(stream)
                    with contextlib.suppress(Exception):
                        stream.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                # Held: the bytes wait here, unsent, until restore (or a cut drops them).
                await self._flowing.wait()
                if self.mode == "cut":
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if writer.can_write_eof():
                    writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with an RST (SO_LINGER 0), as a dropped network path looks to a peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
