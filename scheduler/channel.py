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
from mesh.wire import FrameError, encode, keep_alive, read_frame

log = logging.getLogger("actionmesh.scheduler.channel")

HELLO_TIMEOUT = 10.0
# Before its secret is checked a peer gets little: a small hello, and a few at a time.
HELLO_LIMIT = 4096
MAX_GREETING = 64

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
        # Open channels per agent (a reconnect can briefly overlap the old connection).
        self.channels: dict[AgentId, set[asyncio.StreamWriter]] = {}
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._greeting = 0

    @property
    def connected(self) -> dict[AgentId, int]:
        return {agent: len(writers) for agent, writers in self.channels.items()}

    def close_agent(self, agent_id: AgentId) -> None:
        """Close the agent's channels (it left the pool): what they carried unconfirmed is
        handed on, and a half-open connection is not kept waiting."""
        for writer in self.channels.get(agent_id, set()):
            writer.close()

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
        if self._greeting >= MAX_GREETING:
            log.warning("report channel from %s refused: %d connections await their hello",
                        peer, self._greeting)
            writer.close()
            return
        self._writers.add(writer)
        agent: AgentId | None = None
        unconfirmed: dict[Key, Assignment] = {}
        try:
            self._greeting += 1
            try:
                hello = ChannelHello.model_validate_json(
                    await asyncio.wait_for(read_frame(reader, HELLO_LIMIT), HELLO_TIMEOUT))
            finally:
                self._greeting -= 1
            if not hmac.compare_digest(hello.secret.encode(), self.secret.encode()):
                log.warning("report channel from %s (agent %s): wrong secret", peer,
                            hello.agent_id)
                writer.write(encode(ReportAnswer(error="wrong secret")))
                return
            keep_alive(writer)
            writer.write(encode(ReportAnswer()))
            agent = hello.agent_id
            self.channels.setdefault(agent, set()).add(writer)
            while True:
                answer = self._answer(await read_frame(reader), agent, unconfirmed)
                unconfirmed.update(((a.action_id, a.attempt), a) for a in answer.assignments)
                writer.write(encode(answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the agent went away; it sends unanswered reports again when it is back
        except (OSError, ValidationError, FrameError) as exc:  # TimeoutError is an OSError
            log.warning("report channel from %s closed: %r", peer, exc)
        finally:
            if agent is not None:
                self._disconnected(agent, writer)
            if unconfirmed:
                self.undelivered(list(unconfirmed.values()))
            self._writers.discard(writer)
            writer.close()

    def _disconnected(self, agent: AgentId, writer: asyncio.StreamWriter) -> None:
        writers = self.channels.get(agent, set())
        writers.discard(writer)
        if not writers:
            self.channels.pop(agent, None)

    def _answer(self, frame: bytes, agent: AgentId, unconfirmed: dict[Key, Assignment],
                ) -> ReportAnswer:
        try:
            report = AttemptReport.model_validate_json(frame)
        except ValidationError as exc:
            return ReportAnswer(error=f"invalid report: {exc}")
        if report.agent_id != agent:
            # The answer carries the reporting agent's next work: only that agent may ask.
            return ReportAnswer(error=f"a report from agent {report.agent_id!r} on the "
                                      f"channel of agent {agent!r}")
        unconfirmed.pop((report.action_id, report.attempt), None)
        try:
            return ReportAnswer(assignments=self.handler(report))
        except Exception as exc:
            # A bug in applying one report must cost that report, not the channel.
            log.exception("applying %s of %s attempt %d failed", report.stage,
                          report.action_id, report.attempt)
            return ReportAnswer(error=f"the scheduler failed to apply it: {exc!r}")
