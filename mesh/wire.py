"""The report channel's framing: a 4-byte big-endian length, then that many bytes of JSON."""

from __future__ import annotations

import asyncio
import socket
import struct

from pydantic import BaseModel

# Far above any report or answer (an answer carries whole actions, environments included);
# a length past it means a peer that does not speak this protocol.
MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class FrameError(ValueError):
    """A frame that is too large to be one of ours."""


def encode(model: BaseModel) -> bytes:
    body = model.__pydantic_serializer__.to_json(model)
    if len(body) > MAX_FRAME:
        raise FrameError(f"a {type(model).__name__} of {len(body)} bytes exceeds the "
                         f"{MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> bytes:
    """The next frame's body; IncompleteReadError at the end of the stream."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > limit:
        raise FrameError(f"frame of {size} bytes announced; the limit is {limit}")
    return await reader.readexactly(size)


# A peer that vanished without closing (its machine died, a partition) is noticed after
# about idle + interval x count seconds instead of TCP's ~15 minutes.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


def keep_alive(writer: asyncio.StreamWriter) -> None:
    """Turn on TCP keepalive probes for the connection under `writer`."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
