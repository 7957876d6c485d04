"""The agent's end of the link spoken by hand over a real gRPC channel: what tests use to
see exactly what the scheduler's link server sends and accepts."""

from __future__ import annotations

import asyncio
from typing import Any

from grpc import aio

from agent.uplink import channel_for
from mesh import protoconv
from mesh.protocol import AttemptReport, LinkGrant
from mesh.schema import Load
from mesh.v1 import AGENT_KEY, AUTHORIZATION_KEY, CONNECT
from mesh.v1 import link_pb2 as pb


class LinkClient:
    """One stream to a link server, as agent `agent_id` with `credential` (by default the
    grant's); `open` raises the server's refusal as an AioRpcError."""

    def __init__(self, grant: LinkGrant, agent_id: str, credential: str | None = None,
                 options: list[tuple[str, Any]] | None = None) -> None:
        self.grant = grant
        self.agent_id = agent_id
        self.credential = grant.credential if credential is None else credential
        self.options = options or []
        self.channel: aio.Channel | None = None
        self.call: Any = None
        self.pushed: list[pb.Assignment] = []

    async def open(self) -> LinkClient:
        self.channel = channel_for(self.grant, self.options)
        metadata = [(AGENT_KEY, self.agent_id)] if self.agent_id else []
        if self.credential:
            metadata.append((AUTHORIZATION_KEY, f"Bearer {self.credential}"))
        self.call = self.channel.stream_stream(
            CONNECT, request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.SchedulerMessage.FromString)(metadata=metadata)
        admitted = await asyncio.wait_for(self.call.read(), 10)
        assert admitted == pb.SchedulerMessage(), admitted
        return self

    async def send(self, *reports: AttemptReport, load: Load | None = None,
                   stopped: list[pb.Stopped] | None = None) -> None:
        message = pb.AgentMessage(reports=[protoconv.report_pb(r) for r in reports],
                                  stopped=stopped or [])
        if load is not None:
            message.load.CopyFrom(protoconv.load_pb(load))
        await self.call.write(message)

    async def read(self) -> pb.SchedulerMessage:
        message = await asyncio.wait_for(self.call.read(), 10)
        assert message is not aio.EOF, "the scheduler closed the stream"
        self.pushed.extend(message.assignments)
        return message  # type: ignore[no-any-return]

    async def answer(self) -> pb.ReportAnswer:
        """The next answer, keeping what comes unasked meanwhile in `pushed`."""
        while True:
            message = await self.read()
            if message.answers:
                assert len(message.answers) == 1, message
                return message.answers[0]

    async def ask(self, report: AttemptReport) -> list[str]:
        """Send one report; the ids of the actions its answer hands this agent."""
        await self.send(report)
        answer = await self.answer()
        assert not answer.error, answer.error
        return [a.action_id for a in answer.assignments]

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close(grace=None)
