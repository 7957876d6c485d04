"""The scheduler's end of the agent link: a gRPC server with one stream per agent, admitted
by that agent's credential and bound to it; reports and load come up, answers, new work and
stops go down.

A Ray call per stage report costs a round trip through several threads on both sides
(~2 ms on a busy 2-core machine); on a stream served on the scheduler's event loop a report
and its answer cost a fraction of that, which is what refills a freed slot at hundreds of
short actions a second. Ray carries everything else, and each agent's grant (address and
credential), so only an agent Ray admitted can open a stream, and only as itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from grpc import aio

from mesh import protoconv
from mesh.errors import InvalidInput
from mesh.protocol import Assignment, AttemptReport, CancelOutcome, LinkGrant, ReportAnswer
from mesh.schema import ActionId, AgentId, AgentInfo, Load, MeshConfig
from mesh.v1 import (
    AGENT_KEY,
    CONNECT,
    KEEPALIVE_OPTIONS,
    MAX_DOWN,
    MAX_UP,
    holds_token,
    split_path,
)
from mesh.v1 import link_pb2 as pb
from scheduler.core.decisions import Stop

log = logging.getLogger("actionmesh.scheduler.link")

# What the items of one message down may take together; each field's tag and length on top.
ROOM = MAX_DOWN - 1024
ITEM_OVERHEAD = 16
OPTIONS: list[tuple[str, int]] = [
    *KEEPALIVE_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 15_000),
    ("grpc.max_receive_message_length", MAX_UP),
    ("grpc.max_send_message_length", MAX_DOWN),
    # One scheduler per port: a second (a restart while the old process lingers) must fail
    # to bind, not share the port's connections with it.
    ("grpc.so_reuseport", 0),
]

# Applies reports that arrived together, from one agent or several, in order as one (one
# scheduling step, one write): one answer per report, each saying whether what it changed
# was written; an agent's next work rides on the answer to its last report.
Handler = Callable[[list[AttemptReport]], list[ReportAnswer]]
# Receives what a closed stream carried that its agent never confirmed: assignments (the
# agent ignores a second start of an attempt it knows) and stops with no outcome back, so
# they go another way rather than being lost.
Undelivered = Callable[[list[Assignment], list[Stop]], None]
LoadTaken = Callable[[AgentId, Load], None]
Stopped = Callable[[Stop, CancelOutcome], None]
# The registered agent of an id, which a credential must have been made for.
Identity = Callable[[AgentId], AgentInfo | None]

Key = tuple[ActionId, int]
T = TypeVar("T")


def credential(key: bytes, info: AgentInfo) -> str:
    """The credential of one agent process: its id, pid and start time under the key only
    this scheduler process holds. A new agent on the node (or a restarted scheduler) makes
    every earlier credential worthless."""
    identity = f"{info.agent_id}\n{info.pid}\n{info.started_at!r}".encode()
    return hmac.new(key, identity, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Tls:
    cert: bytes
    key: bytes
    server_name: str

    @classmethod
    def read(cls, config: MeshConfig, host: str) -> Tls | None:
        if config.link_cert is None or config.link_key is None:
            return None
        return cls(Path(config.link_cert).read_bytes(), Path(config.link_key).read_bytes(),
                   config.link_server_name or host)


@dataclass(eq=False)
class _Stream:
    """One admitted stream: what waits to go down it, and what went down unconfirmed."""

    agent_id: AgentId
    opened_at: float
    # What waits to go down, each item with its converted form's size: answers, owed in
    # order; stops; new work.
    answers: deque[tuple[pb.ReportAnswer, int]] = field(default_factory=deque)
    stops: deque[tuple[tuple[Stop, pb.Stop], int]] = field(default_factory=deque)
    assignments: deque[tuple[tuple[Assignment, pb.Assignment], int]] = field(
        default_factory=deque)
    unconfirmed: dict[Key, Assignment] = field(default_factory=dict)
    # By attempt and kind: a cancel and a take-back of one attempt may both be on the way.
    unanswered_stops: dict[tuple[ActionId, int, bool], Stop] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def pending(self) -> bool:
        return bool(self.answers or self.assignments or self.stops)


class LinkServer:
    """Serves AgentLink.Connect on the scheduler's event loop."""

    def __init__(self, config: MeshConfig, host: str, identity: Identity, handler: Handler,
                 load: LoadTaken, stopped: Stopped, undelivered: Undelivered,
                 clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.port = config.link_port
        self.tls = Tls.read(config, host)
        self.identity = identity
        self.handler = handler
        self.load = load
        self.stopped = stopped
        self.undelivered = undelivered
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._server: aio.Server | None = None
        # Open streams per agent, newest last (a reconnect can briefly overlap the old).
        self.streams: dict[AgentId, list[_Stream]] = {}
        # Since when each agent has had a stream open, or has had none.
        self.since: dict[AgentId, float] = {}
        # Reports not yet applied (or the answer refusing one), by the stream they came on,
        # in arrival order.
        self._inbox: list[tuple[_Stream, AttemptReport | ReportAnswer]] = []
        # Other services served on the same port (the client link), each admitting its own.
        self._services: list[grpc.GenericRpcHandler] = []

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> int:
        server = aio.server(options=OPTIONS)
        service, method = split_path(CONNECT)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {
            method: grpc.stream_stream_rpc_method_handler(
                self._connect, request_deserializer=pb.AgentMessage.FromString,
                response_serializer=pb.SchedulerMessage.SerializeToString)}),
            *self._services])
        address = f"{self.host}:{self.port}"
        port: int
        try:
            if self.tls is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, grpc.ssl_server_credentials(
                    [(self.tls.key, self.tls.cert)]))
            await server.start()
        except BaseException:
            await server.stop(grace=None)
            raise
        self._server, self.port = server, port
        return port

    def add_service(self, handler: grpc.GenericRpcHandler) -> None:
        """Serve another service on the link's port, from `start` on."""
        if self._server is not None:
            raise RuntimeError("a service must be added before the link serves")
        self._services.append(handler)

    async def close(self) -> None:
        server, self._server = self._server, None  # no more grants
        if server is not None:
            await server.stop(grace=None)

    def grant(self, info: AgentInfo) -> LinkGrant | None:
        """The grant for a registered agent; None while the server is not serving."""
        return self.grant_with(credential(self._key, info))

    def grant_with(self, secret: str) -> LinkGrant | None:
        """A grant carrying this credential (an agent's, or the client link's token); None
        while the server is not serving."""
        if self._server is None:
            return None
        return LinkGrant(
            host=self.host, port=self.port, credential=secret,
            root_certificate="" if self.tls is None else self.tls.cert.decode(),
            server_name="" if self.tls is None else self.tls.server_name)

    # ---- what the scheduler sends --------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self._server is not None

    def on_stream(self, agent_id: AgentId) -> bool:
        return self._newest(agent_id) is not None

    def push(self, agent_id: AgentId, assignments: list[Assignment]) -> list[Assignment]:
        """Send assignments down the agent's newest stream; returns those it cannot carry
        (all when the agent has no stream open, else those too large for a message).
        Should the stream close before the agent confirms them (by a report on the
        attempt), they are handed on as undelivered."""
        stream = self._newest(agent_id)
        if stream is None:
            return assignments
        refused = []
        for assignment in assignments:
            converted = protoconv.assignment_pb(assignment)
            size = converted.ByteSize() + ITEM_OVERHEAD
            if size < ROOM:
                stream.assignments.append(((assignment, converted), size))
            else:
                refused.append(assignment)
        stream.wake.set()
        return refused

    def stop(self, decision: Stop) -> bool:
        """Send a stop down the agent's newest stream; False when it has none open."""
        stream = self._newest(decision.agent_id)
        if stream is None:
            return False
        converted = pb.Stop(action_id=decision.action_id, attempt=decision.attempt,
                            reason=decision.reason, held_only=decision.held_only)
        stream.stops.append(((decision, converted), converted.ByteSize() + ITEM_OVERHEAD))
        stream.wake.set()
        return True

    def close_agent(self, agent_id: AgentId) -> None:
        """Close the agent's streams (it left the pool): what they carried unconfirmed is
        handed on."""
        for stream in self.streams.get(agent_id, []):
            stream.closed = True
            stream.wake.set()

    def _newest(self, agent_id: AgentId) -> _Stream | None:
        streams = self.streams.get(agent_id)
        if not streams or streams[-1].closed:
            return None
        return streams[-1]

    # ---- serving one stream --------------------------------------------------------------

    def _admit(self, context: aio.ServicerContext) -> AgentId | None:
        """The agent the stream's metadata proves it is; None (refused) otherwise."""
        metadata = context.invocation_metadata()
        claimed = dict(metadata or ()).get(AGENT_KEY)
        if not isinstance(claimed, str):
            return None
        info = self.identity(AgentId(claimed))
        if info is None or not holds_token(metadata, credential(self._key, info)):
            return None
        return info.agent_id

    async def _connect(self, requests: AsyncIterator[pb.AgentMessage],
                       context: aio.ServicerContext) -> None:
        agent = self._admit(context)
        if agent is None:
            claimed = dict(context.invocation_metadata() or ()).get(AGENT_KEY, "")
            log.warning("agent stream from %s refused: no valid credential for agent %r",
                        context.peer(), claimed)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "no valid credential for this agent")
            return
        stream = _Stream(agent, self.clock())
        if not self.on_stream(agent):
            self.since[agent] = stream.opened_at
        # One stream per agent: an older one (a reconnect the old connection has not yet
        # noticed it lost) is closed, and what it carried unconfirmed is handed on.
        self.close_agent(agent)
        self.streams.setdefault(agent, []).append(stream)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        reason = "the call was cancelled"
        try:
            await context.write(pb.SchedulerMessage())  # admitted
            tasks = [loop.create_task(self._read(stream, requests)),
                     loop.create_task(self._write(stream, context))]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            failed = [t.exception() for t in done if t.exception() is not None]
            reason = (repr(failed[0]) if failed else "the agent left the pool"
                      if stream.closed else "the agent closed it")
        except Exception as exc:
            reason = repr(exc)
        finally:
            stream.closed = True
            for task in tasks:
                task.cancel()
            self._closed(stream, reason)

    async def _read(self, stream: _Stream, requests: AsyncIterator[pb.AgentMessage]) -> None:
        async for message in requests:
            self._take(stream, message)

    def _closed(self, stream: _Stream, reason: str) -> None:
        streams = self.streams.get(stream.agent_id, [])
        if stream in streams:
            streams.remove(stream)
        if not streams:
            self.streams.pop(stream.agent_id, None)
            if self.identity(stream.agent_id) is not None:  # not for one that left
                self.since[stream.agent_id] = self.clock()
        log.info("stream of agent %s closed: %s", stream.agent_id, reason)
        unconfirmed = [*stream.unconfirmed.values(), *(a for (a, _), _ in stream.assignments)]
        unstopped = [*stream.unanswered_stops.values(), *(s for (s, _), _ in stream.stops)]
        if unconfirmed or unstopped:
            self.undelivered(unconfirmed, unstopped)

    def _take(self, stream: _Stream, message: pb.AgentMessage) -> None:
        """Take one message of the agent. Its reports wait for the end of this turn of the
        event loop, to be applied with those that came meanwhile on any stream; each is
        answered, in order. Its load and stop outcomes are taken at once, so before its
        reports: only an outcome saying the agent never had the attempt changes anything,
        and a report on that attempt can only be its refusal, which ends it the same way."""
        agent = stream.agent_id
        if message.reports and not self._inbox:
            asyncio.get_running_loop().call_soon(self._apply_inbox)
        for raw in message.reports:
            try:
                report = protoconv.report(raw, agent)
            except InvalidInput as exc:
                self._inbox.append((stream, ReportAnswer(error=f"invalid report: {exc}")))
                continue
            stream.unconfirmed.pop((report.action_id, report.attempt), None)
            self._inbox.append((stream, report))
        if message.HasField("load"):
            try:
                self.load(agent, protoconv.load(message.load))
            except InvalidInput as exc:
                log.warning("load of agent %s refused: %s", agent, exc)
        for outcome in message.stopped:
            try:
                checked = protoconv.outcome(outcome.outcome)
            except ValueError as exc:
                # The stop stays unanswered: should the stream close, it goes by Ray call.
                log.warning("stop outcome of agent %s not understood: %s", agent, exc)
                continue
            stop = stream.unanswered_stops.pop(
                (ActionId(outcome.action_id), outcome.attempt, outcome.held_only), None)
            if stop is not None:
                self.stopped(stop, checked)

    def _apply_inbox(self) -> None:
        """Apply every report waiting, from all streams, as one; queue each answer on its
        stream. A stream whose answers cannot all be queued is closed, so that its agent
        sends its unanswered reports again rather than take later answers for them."""
        inbox, self._inbox = self._inbox, []
        reports = [r for _, r in inbox if isinstance(r, AttemptReport)]
        answers = iter(self._apply(reports))
        for stream, item in inbox:
            answer = next(answers) if isinstance(item, AttemptReport) else item
            try:
                self._queue_answer(stream, answer)
            except Exception:
                log.exception("queueing an answer for agent %s failed; closing its stream",
                              stream.agent_id)
                stream.closed = True
                stream.wake.set()

    def _queue_answer(self, stream: _Stream, answer: ReportAnswer) -> None:
        """Queue an answer on its stream; the work on it is handed on if the stream has
        closed meanwhile."""
        if stream.closed:
            if answer.assignments:
                self.undelivered(answer.assignments, [])
            return
        converted, size = self._answer_pb(answer)
        if converted.assignments:
            stream.unconfirmed.update(((a.action_id, a.attempt), a) for a in answer.assignments)
        stream.answers.append((converted, size))
        stream.wake.set()

    def _apply(self, reports: list[AttemptReport]) -> list[ReportAnswer]:
        """One answer per report: the handler's, or an error for each if it fails."""
        if not reports:
            return []
        try:
            answers = self.handler(reports)
            if len(answers) != len(reports):
                raise RuntimeError(f"{len(answers)} answers to {len(reports)} reports")
            return answers
        except Exception as exc:
            # A bug in applying reports must cost those reports, not the streams.
            log.exception("applying %d report(s) failed, the first %s of %s attempt %d",
                          len(reports), reports[0].stage, reports[0].action_id,
                          reports[0].attempt)
            return [ReportAnswer(error=f"the scheduler failed to apply it: {exc!r}")
                    for _ in reports]

    def _answer_pb(self, answer: ReportAnswer) -> tuple[pb.ReportAnswer, int]:
        """The answer as it goes down, and its size."""
        converted = protoconv.answer_pb(answer)
        size = converted.ByteSize() + ITEM_OVERHEAD
        if size < ROOM:
            return converted, size
        # Too much work for one message: the answer goes without it, the work another way.
        self.undelivered(answer.assignments, [])
        converted = pb.ReportAnswer(error=answer.error, recorded=answer.recorded)
        return converted, converted.ByteSize() + ITEM_OVERHEAD

    async def _write(self, stream: _Stream, context: aio.ServicerContext) -> None:
        """Send what is queued for the stream (answers, stops, new work), in as few messages
        as the size limit allows; the only writer (gRPC takes one write at a time), so what
        comes while a write is under way goes in the next. Returns when the stream is
        closed from this side."""
        while not stream.closed:
            await stream.wake.wait()
            stream.wake.clear()
            while stream.pending() and not stream.closed:
                await context.write(self._next_message(stream))

    def _next_message(self, stream: _Stream) -> pb.SchedulerMessage:
        """Take what fits in one message off the stream's queues (each item fits alone):
        answers first, as they are owed, in order. Stops and work sent now are unanswered
        or unconfirmed until the agent speaks of them."""
        answers, room = _fitting(stream.answers, ROOM, anyway=True)
        stops, room = _fitting(stream.stops, room, anyway=not answers)
        work, _ = _fitting(stream.assignments, room, anyway=not (answers or stops))
        stream.unanswered_stops.update(((s.action_id, s.attempt, s.held_only), s)
                                       for s, _ in stops)
        stream.unconfirmed.update(((a.action_id, a.attempt), a) for a, _ in work)
        return pb.SchedulerMessage(answers=answers, stops=[m for _, m in stops],
                                   assignments=[m for _, m in work])


def _fitting(queue: deque[tuple[T, int]], room: int, anyway: bool) -> tuple[list[T], int]:
    """Items off the front of `queue` while their sizes fit in `room` (the first one
    `anyway`, however large), and the room left."""
    taken: list[T] = []
    while queue and (queue[0][1] < room or (anyway and not taken)):
        item, size = queue.popleft()
        taken.append(item)
        room -= size
    return taken, room
