"""The report channel's framing: a 4-byte big-endian length, then that many bytes of JSON."""

from __future__ import annotations

import asyncio
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


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next frame's body; IncompleteReadError at the end of the stream."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes announced; the limit is {MAX_FRAME}")
    return await reader.readexactly(size)
