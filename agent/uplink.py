"""The agent's link to the scheduler: one gRPC stream carrying its reports and load up and
answers, new work and stops down; Ray calls while the stream cannot open."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import grpc
from grpc import aio
from pydantic import ValidationError

from agent.links import NamedActor
from mesh import protoconv
from mesh.channels import aio_channel
from mesh.errors import InvalidInput
from mesh.protocol import Assignment, AttemptReport, CancelOutcome, LinkGrant, ReportAnswer
from mesh.schema import ActionId, AgentId, Load
from mesh.v1 import AGENT_KEY, CONNECT, KEEPALIVE_OPTIONS, MAX_DOWN, MAX_UP, bearer
from mesh.v1 import link_pb2 as pb

log = logging.getLogger(__name__)

# The longest reason a refusal made here carries.
REASON_CHARS = 1000
# Retries of a report whose Ray call failed because the scheduler died or restarted.
REPORT_RETRIES = 3
# Reports kept while the scheduler cannot be found; past this the oldest are dropped (the
# scheduler asks for `holdings()` when it comes back, which carries recent end reports).
MAX_QUEUED_REPORTS = 10_000
# Bytes of reports in one message: a backlog's message stays far below the scheduler's
# limit (a report's reason is cut to REASON_CHARS where it is made).
REPORT_BYTES = MAX_UP // 4
# Reports that go at once, lingering or not: enough to make a message worth its cost.
LINGER_REPORTS = 32
LOOKUP_BACKOFF = 0.5
# Seconds to wait for the stream to be admitted.
CONNECT_TIMEOUT = 5.0
# After a failed attempt to open the stream, or a lost stream, wait this long, doubling up
# to MAX_BACKOFF, before the next attempt (reports go by Ray calls meanwhile).
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
OPTIONS: list[tuple[str, int]] = [
    *KEEPALIVE_OPTIONS,
    ("grpc.max_receive_message_length", MAX_DOWN),
    ("grpc.max_send_message_length", MAX_UP),
]

Assignments = Callable[[list[Assignment]], None]
Recorded = Callable[[AttemptReport], None]
StopHandler = Callable[[ActionId, int, str, bool], Awaitable[CancelOutcome]]
Call = Any  # aio.StreamStreamCall[pb.AgentMessage, pb.SchedulerMessage]


class SchedulerLink:
    """ReportSink, and the agent's load and stop outcomes: they go out in order; the work the
    scheduler sends (on the answer to an end report, or unasked) goes to `on_assignments`,
    a stop to `on_stop`, and a report the scheduler answers as written to `on_recorded`.

    While `holds_work()` says the agent has started work waiting for its next free slot,
    reports wait up to `linger` seconds to go out together: no slot waits on their answers
    then, and a message, its answer and the scheduler's step and write are each paid once
    for several. Load and stop outcomes never wait, and take what waits with them.

    The usual path is the stream, opened with the grant the scheduler hands the agent over
    Ray. Reports sent on it stay unanswered until their answer arrives; when it breaks they
    are sent again (the scheduler fences reports by attempt and stage, so a repeat is
    dropped there). While the stream cannot be opened, reports and load go by Ray calls,
    each report sent as the one before it has gone (not answered), retried after an actor
    failure.
    """

    def __init__(self, scheduler: NamedActor, agent_id: AgentId,
                 on_assignments: Assignments | None = None,
                 on_stop: StopHandler | None = None, use_stream: bool = True,
                 linger: float = 0.0, holds_work: Callable[[], bool] = lambda: False) -> None:
        self.scheduler = scheduler
        self.agent_id = agent_id
        self.on_assignments = on_assignments
        self.on_stop = on_stop
        self.on_recorded: Recorded | None = None
        self.use_stream = use_stream
        self.linger = linger
        self.holds_work = holds_work
        self._lingering: asyncio.TimerHandle | None = None
        self._grant: LinkGrant | None = None
        self._queue: deque[tuple[AttemptReport, int]] = deque()
        self._unanswered: deque[AttemptReport] = deque()
        self._load: Load | None = None
        self._stopped: list[pb.Stopped] = []
        self._channel: aio.Channel | None = None
        self._call: Call | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connector: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry_at = 0.0
        self._failures = 0
        self._failing = False
        self._closed = False

    @property
    def on_stream(self) -> bool:
        return self._call is not None

    async def close(self) -> None:
        """Stop sending: close the stream and end the background tasks."""
        self.use_stream = False
        self._closed = True
        if self._lingering is not None:
            self._lingering.cancel()
        tasks = [t for t in (self._connector, self._reader, self._pump, *self._tasks)
                 if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._call = None
        await self._drop_stream()

    def grant(self, grant: LinkGrant) -> None:
        """A (new) grant from the scheduler: open the stream with it."""
        if grant == self._grant and self._call is not None:
            return
        self._grant = grant
        self._failures = 0
        self._retry_at = 0.0
        if self._call is not None:  # a grant from a restarted scheduler: the old is dead
            self._lost(self._call, "a new grant arrived")
        self.open_stream()

    def report(self, report: AttemptReport) -> None:
        self._enqueue(report, 0)

    def load(self, load: Load) -> None:
        self._load = load
        self._kick()

    def _enqueue(self, report: AttemptReport, tries: int) -> None:
        self._queue.append((report, tries))
        self._trim()
        self._kick()

    def _trim(self) -> None:
        while len(self._queue) > MAX_QUEUED_REPORTS:
            dropped, _ = self._queue.popleft()
            log.warning("dropping report %s of %s: scheduler unreachable", dropped.stage,
                        dropped.action_id)

    def _pending(self) -> bool:
        return bool(self._queue or self._load is not None or self._stopped)

    def _kick(self, may_wait: bool = True) -> None:
        if self._closed or not self._pending() or (self._pump is not None
                                                   and not self._pump.done()):
            return
        if may_wait and self._may_wait():
            if self._lingering is None:
                self._lingering = asyncio.get_running_loop().call_later(
                    self.linger, self._lingered)
            return
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        self._pump = asyncio.get_running_loop().create_task(self._run())

    def _may_wait(self) -> bool:
        """Whether what is pending may wait for more: reports alone, short of a message's
        worth, while the agent holds work for its next free slot."""
        return (self.linger > 0 and self._load is None and not self._stopped
                and len(self._queue) < LINGER_REPORTS and self.holds_work())

    def _lingered(self) -> None:
        self._lingering = None
        self._kick(may_wait=False)

    async def _run(self) -> None:
        try:
            while self._pending():
                call = self._call
                if call is None:
                    self.open_stream()
                    await self._send_by_call()
                    continue
                load, message = self._load, self._next_message()
                try:
                    await call.write(message)
                except (aio.AioRpcError, aio.UsageError, asyncio.InvalidStateError) as exc:
                    if self._load is None:
                        self._load = load  # a sample is not lost with the stream
                    self._lost(call, repr(exc))
        finally:
            # What was queued again while this pump was finishing must not wait for the next.
            if self._pending():
                asyncio.get_running_loop().call_soon(self._kick)

    def _next_message(self) -> pb.AgentMessage:
        """Everything waiting, in one message: its reports are then unanswered."""
        message = pb.AgentMessage(stopped=self._stopped)
        self._stopped = []
        if self._load is not None:
            message.load.CopyFrom(protoconv.load_pb(self._load))
            self._load = None
        room = REPORT_BYTES
        while self._queue:
            converted = protoconv.report_pb(self._queue[0][0])
            size = converted.ByteSize()
            if size >= room and message.reports:
                break
            room -= size
            report, _ = self._queue.popleft()
            self._unanswered.append(report)
            message.reports.append(converted)
        return message

    # ---- the stream ----------------------------------------------------------------------

    def open_stream(self) -> None:
        """Open the stream in the background, once there is a grant; reports go by Ray
        calls until it is open."""
        if not self.use_stream or self._grant is None or self._call is not None:
            return
        if self._connector is None or self._connector.done():
            self._connector = asyncio.get_running_loop().create_task(self._connect_loop())

    def _backoff(self) -> float:
        self._failures += 1
        return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** (self._failures - 1)))

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._call is None and self._grant is not None and self.use_stream:
            delay = self._retry_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            grant = self._grant
            if grant is None:
                return
            try:
                call = await self._connect(grant)
            except Exception as exc:
                if _refused(exc) and self._grant is grant:
                    # A grant from a scheduler process that is gone, or for an agent
                    # process it no longer knows: wait for the next (sent on registering).
                    self._grant = None
                self._retry_at = loop.time() + self._backoff()
                if not self._failing:
                    log.warning("stream to the scheduler not open (%s); reporting by Ray "
                                "calls and trying again, backing off to %gs", _why(exc),
                                MAX_BACKOFF)
                self._failing = True
                continue
            if self._failing:
                log.info("stream to the scheduler open again")
            self._failing = False
            self._call = call
            self._reader = loop.create_task(self._read(call))
            self._kick()

    async def _connect(self, grant: LinkGrant) -> Call:
        await self._drop_stream()
        channel = self._channel = channel_for(grant, OPTIONS)
        call = channel.stream_stream(
            CONNECT, request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.SchedulerMessage.FromString,
        )(metadata=((AGENT_KEY, self.agent_id), bearer(grant.credential)))
        try:
            admitted = await asyncio.wait_for(call.read(), CONNECT_TIMEOUT)
            if admitted is aio.EOF:
                raise ConnectionError("the scheduler closed the stream at once")
        except BaseException:
            call.cancel()
            await self._drop_stream()
            raise
        return call

    async def _drop_stream(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(grace=None)

    async def _read(self, call: Call) -> None:
        why = "the scheduler closed it"
        try:
            while True:
                message = await call.read()
                if message is aio.EOF or self._call is not call:
                    break  # (a message of a stream already replaced is not acted on)
                self._failures = 0  # a working stream: the next loss retries at once
                self._take_message(message)
        except aio.AioRpcError as exc:
            why = _why(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            why = repr(exc)
            log.exception("reading the stream failed; closing it")
        self._lost(call, why)

    def _take_message(self, message: pb.SchedulerMessage) -> None:
        if len(message.answers) > len(self._unanswered):
            raise ConnectionError(f"{len(message.answers)} answers to "
                                  f"{len(self._unanswered)} reports")
        for answer in message.answers:
            report = self._unanswered.popleft()
            self._take(report, ReportAnswer(assignments=self._work(answer.assignments),
                                            error=answer.error, recorded=answer.recorded))
        work = self._work(message.assignments)
        if work and self.on_assignments is not None:
            self.on_assignments(work)
        for stop in message.stops:
            self._spawn(self._stop(stop))

    def _work(self, assignments: Iterable[pb.Assignment]) -> list[Assignment]:
        """The assignments that validate; each that does not is refused back, so the
        scheduler queues its action again rather than waiting on a start that never comes."""
        work = []
        for assignment in assignments:
            try:
                work.append(protoconv.assignment(assignment, self.agent_id))
            except InvalidInput as exc:
                log.error("an assignment of %s was not understood: %s",
                          assignment.action_id, exc)
                self._refuse(assignment, f"the agent could not read it: {exc}")
        return work

    def _refuse(self, assignment: pb.Assignment, reason: str) -> None:
        try:
            refusal = AttemptReport(
                action_id=ActionId(assignment.action_id), attempt=assignment.attempt,
                agent_id=self.agent_id, stage="refused", time=time.time(),
                reason=reason[:REASON_CHARS])
        except ValidationError:
            return  # no attempt to name: the scheduler sends it again if the stream closes
        self.report(refusal)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop(self, stop: pb.Stop) -> None:
        if self.on_stop is None:
            return
        try:
            outcome = await self.on_stop(ActionId(stop.action_id), stop.attempt, stop.reason,
                                         stop.held_only)
        except (InvalidInput, ValidationError) as exc:
            log.error("a stop of %s was not understood: %s", stop.action_id, exc)
            return
        self._stopped.append(pb.Stopped(action_id=stop.action_id, attempt=stop.attempt,
                                        outcome=protoconv.outcome_pb(outcome),
                                        held_only=stop.held_only))
        self._kick()

    def _lost(self, call: Call, why: str) -> None:
        call.cancel()
        if self._call is not call:
            return
        self._call = None
        log.warning("stream to the scheduler lost (%s); %d unanswered reports go again", why,
                    len(self._unanswered))
        # Back to the front, oldest first: order is kept, and the next pump pass resends.
        self._queue.extendleft((report, 0) for report in reversed(self._unanswered))
        self._unanswered.clear()
        self._trim()
        loop = asyncio.get_running_loop()
        self._retry_at = loop.time() + (0.0 if self._failures == 0 else self._backoff())
        if self._failures == 0:
            self._failures = 1  # a second loss before any answer backs off
        self.open_stream()
        self._kick()

    # ---- Ray calls -----------------------------------------------------------------------

    async def _send_by_call(self) -> None:
        try:
            handle = await self.scheduler.get()
        except Exception as exc:
            log.warning("scheduler not found (%r); %d reports wait", exc, len(self._queue))
            await asyncio.sleep(LOOKUP_BACKOFF)
            return
        # Stop outcomes answer stops that came on a lost stream: the scheduler sends those
        # stops again by Ray call, which carries the outcome back itself.
        self._stopped = []
        if self._load is not None:
            load, self._load = self._load, None
            self.scheduler.watch(handle.report_load.remote(self.agent_id, load))
        if not self._queue:
            return
        report, tries = self._queue.popleft()
        again = (functools.partial(self._enqueue, report, tries + 1)
                 if tries < REPORT_RETRIES else None)
        try:
            ref = handle.report_attempt.remote(report)
        except Exception as exc:
            log.warning("submitting a report to the scheduler failed: %r", exc)
            self.scheduler.forget()
            if again is not None:
                again()
            return
        self.scheduler.watch(ref, again, functools.partial(self._answered, report))

    def _answered(self, report: AttemptReport, answer: Any) -> None:
        try:
            # Unpickled from a Ray call, so not validated yet.
            checked = ReportAnswer.model_validate(
                answer.model_dump() if isinstance(answer, ReportAnswer) else answer)
        except ValidationError as exc:
            log.error("the scheduler's answer to report %s of %s was not understood: %s",
                      report.stage, report.action_id, exc)
            return
        self._take(report, checked)

    def _take(self, report: AttemptReport, answer: ReportAnswer) -> None:
        """Act on the scheduler's answer to one report."""
        if answer.error:
            log.warning("the scheduler refused report %s of %s attempt %d: %s",
                        report.stage, report.action_id, report.attempt, answer.error)
            return
        if answer.recorded and self.on_recorded is not None:
            self.on_recorded(report)
        if answer.assignments and self.on_assignments is not None:
            self.on_assignments(answer.assignments)


def channel_for(grant: LinkGrant, options: list[tuple[str, Any]]) -> aio.Channel:
    """A channel to the scheduler the grant names: TLS, trusting only the certificate the
    grant carries, when it carries one."""
    return aio_channel(f"{grant.host}:{grant.port}", grant.root_certificate.encode() or None,
                       grant.server_name, options)


def _refused(exc: BaseException) -> bool:
    return (isinstance(exc, aio.AioRpcError)
            and exc.code() == grpc.StatusCode.UNAUTHENTICATED)


def _why(exc: BaseException) -> str:
    if isinstance(exc, aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)
