"""The scheduler's end of the report channel: one TCP stream per agent, answered in order.

A Ray call per stage report costs a round trip through several threads on both sides
(~2 ms on a busy 2-core machine); on a plain stream served on the scheduler's event loop a
report and its answer cost a fraction of that, which is what refills a freed slot at
hundreds of short actions a second. Ray still carries everything else, and the address and
secret of this channel, so only agents Ray admitted can connect.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Callable

from pydantic import ValidationError

from mesh.schema import (
    ActionId,
    AgentId,
    Assignment,
    AttemptReport,
    ChannelHello,
    ReportAnswer,
    ReportChannel,
)
from mesh.wire import FrameError, encode, read_frame

log = logging.getLogger("actionmesh.scheduler.channel")

HELLO_TIMEOUT = 10.0

# Applies a report and returns the reporting agent's next assignments.
Handler = Callable[[AttemptReport], list[Assignment]]
# Receives the assignments a closed channel carried that the agent never confirmed (by a
# report on the attempt), so they are sent another way rather than left assigned and never
# started; the agent ignores a second start of an attempt it knows.
Undelivered = Callable[[list[Assignment]], None]

Key = tuple[ActionId, int]


class ReportServer:
    """Serves report channels: a hello with the secret, then report frames, each answered."""

    def __init__(self, handler: Handler, undelivered: Undelivered, host: str,
                 port: int = 0) -> None:
        self.handler = handler
        self.undelivered = undelivered
        self.host = host
        self.port = port
        self.secret = secrets.token_hex(16)
        self.address: ReportChannel | None = None
        self.refused = 0
        # Open channels per agent (a reconnect can briefly overlap the old connection).
        self.connected: dict[AgentId, int] = {}
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> ReportChannel:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        port = self._server.sockets[0].getsockname()[1]
        self.address = ReportChannel(host=self.host, port=port, secret=self.secret)
        return self.address

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self._writers.add(writer)
        agent: AgentId | None = None
        unconfirmed: dict[Key, Assignment] = {}
        try:
            hello = ChannelHello.model_validate_json(
                await asyncio.wait_for(read_frame(reader), HELLO_TIMEOUT))
            if not hmac.compare_digest(hello.secret.encode(), self.secret.encode()):
                log.warning("report channel from %s (agent %s): wrong secret", peer,
                            hello.agent_id)
                writer.write(encode(ReportAnswer(error="wrong secret")))
                return
            writer.write(encode(ReportAnswer()))
            agent = hello.agent_id
            self.connected[agent] = self.connected.get(agent, 0) + 1
            while True:
                answer = self._answer(await read_frame(reader), unconfirmed)
                unconfirmed.update(((a.action_id, a.attempt), a) for a in answer.assignments)
                writer.write(encode(answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the agent went away; it sends unanswered reports again when it is back
        except (TimeoutError, ValidationError, FrameError) as exc:
            log.warning("report channel from %s closed: %s", peer, exc)
        finally:
            if agent is not None:
                self._disconnected(agent)
            if unconfirmed:
                self.undelivered(list(unconfirmed.values()))
            self._writers.discard(writer)
            writer.close()

    def _disconnected(self, agent: AgentId) -> None:
        left = self.connected.get(agent, 0) - 1
        if left > 0:
            self.connected[agent] = left
        else:
            self.connected.pop(agent, None)

    def _answer(self, frame: bytes, unconfirmed: dict[Key, Assignment]) -> ReportAnswer:
        try:
            report = AttemptReport.model_validate_json(frame)
        except ValidationError as exc:
            self.refused += 1
            return ReportAnswer(error=f"invalid report: {exc}")
        unconfirmed.pop((report.action_id, report.attempt), None)
        try:
            return ReportAnswer(assignments=self.handler(report))
        except Exception as exc:
            # A bug in applying one report must cost that report, not the channel.
            self.refused += 1
            log.exception("applying %s of %s attempt %d failed", report.stage,
                          report.action_id, report.attempt)
            return ReportAnswer(error=f"the scheduler failed to apply it: {exc!r}")
