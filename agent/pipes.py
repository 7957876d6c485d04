"""The asyncio protocol an attempt's process runs under: its pipes feed the log shipper, and
its exit and the pipes' end are separate futures."""

from __future__ import annotations

import asyncio

from agent.logship import LineSplitter, LogShipper
from mesh.schema import Stream

_STREAMS: dict[int, Stream] = {1: "stdout", 2: "stderr"}


class OutputProtocol(asyncio.SubprocessProtocol):
    """Receives an attempt's output in the chunks the loop reads (up to 256 KiB each).

    Exit and end of output are kept apart on purpose: in Python 3.11 `Process.wait()` only
    returns once the pipes have closed too, so a background child still holding stdout would
    hide the main process's exit for as long as it lives.
    """

    def __init__(self, shipper: LogShipper) -> None:
        loop = asyncio.get_running_loop()
        self.shipper = shipper
        shipper.on_congestion = self._congestion
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self.bytes_read = 0
        self.transport: asyncio.SubprocessTransport | None = None
        self._splitters = {fd: LineSplitter() for fd in _STREAMS}
        self._open = set(_STREAMS)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.bytes_read += len(data)
        self.shipper.add(_STREAMS[fd], self._splitters[fd].feed(data))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd not in self._open:
            return
        self._open.discard(fd)
        self.shipper.add(_STREAMS[fd], self._splitters[fd].finish())
        if not self._open and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def close_pipes(self) -> None:
        """Stop reading whatever is still open (a process we could not kill holds it)."""
        for fd in list(self._open):
            pipe = self.transport.get_pipe_transport(fd) if self.transport else None
            if pipe is not None:
                pipe.close()  # the loop then calls pipe_connection_lost
            else:
                self.pipe_connection_lost(fd, None)

    def _congestion(self, congested: bool) -> None:
        if self.transport is None:
            return
        for fd in self._open:
            pipe = self.transport.get_pipe_transport(fd)
            if isinstance(pipe, asyncio.ReadTransport):
                if congested:
                    pipe.pause_reading()
                else:
                    pipe.resume_reading()
