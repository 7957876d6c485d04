"""The report channel on real loopback sockets: framing, admission, order, loss and resend."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from agent.links import NamedActor
from agent.reports import SchedulerReports
from mesh.protocol import Assignment, AttemptReport, ChannelHello, ReportAnswer, ReportChannel
from mesh.schema import ActionId, AgentId
from mesh.waiting import async_wait_until
from mesh.wire import MAX_FRAME, FrameError, encode, read_frame
from scheduler.channel import ReportServer
from tests.builders import action, report

# A hang fails within 30 s instead of stalling the run.
pytestmark = pytest.mark.timeout(30)


def assignment(action_id: str) -> Assignment:
    return Assignment(action=action(action_id), action_id=ActionId(action_id), attempt=1,
                      agent_id=AgentId("n1"), assigned_at=1.0)


class Remote:
    """One remote method of a fake actor handle: `.remote(...)` gives an awaitable."""

    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Awaitable[Any]:
        return self.fn(*args)


class FakeSchedulerHandle:
    """Hands out a channel address; takes reports sent by Ray calls, answering none."""

    def __init__(self, address: ReportChannel | None) -> None:
        self.address = address
        self.by_call: list[AttemptReport] = []
        self.report_channel = Remote(self._channel)
        self.report_attempt = Remote(self._report)

    async def _channel(self) -> ReportChannel | None:
        return self.address

    async def _report(self, r: AttemptReport) -> ReportAnswer:
        self.by_call.append(r)
        return ReportAnswer(recorded=r.action_id not in UNWRITTEN)


class Preset(NamedActor):
    def __init__(self, handle: Any) -> None:
        super().__init__("actionmesh.scheduler")
        self.handle = handle

    async def get(self) -> Any:
        return self.handle


# Actions whose reports the fake schedulers answer as taken but not written.
UNWRITTEN = {"a1"}


class Recorder:
    """A report handler that answers chosen reports with assignments."""

    def __init__(self, answers: dict[tuple[str, str], list[Assignment]] | None = None,
                 on_report: Callable[[AttemptReport], None] | None = None) -> None:
        self.seen: list[AttemptReport] = []
        self.answers = answers or {}
        self.on_report = on_report
        self.undelivered: list[Assignment] = []

    def __call__(self, r: AttemptReport) -> ReportAnswer:
        self.seen.append(r)
        if self.on_report is not None:
            self.on_report(r)
        return ReportAnswer(assignments=self.answers.pop((r.action_id, r.stage), []),
                            recorded=r.action_id not in UNWRITTEN)

    def keys(self) -> list[tuple[str, str]]:
        return [(r.action_id, r.stage) for r in self.seen]


Serve = Callable[[Recorder], Awaitable[ReportServer]]
AgentSide = Callable[..., SchedulerReports]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts a report server on loopback for a handler; closes every one after the test."""
    servers: list[ReportServer] = []

    async def start(handler: Recorder) -> ReportServer:
        server = ReportServer(handler, handler.undelivered.extend, "127.0.0.1")
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def agent_side(serve: Serve) -> AsyncIterator[AgentSide]:
    """Agent n1's report sink, finding the scheduler through a fake handle; closed after
    the test, before the servers (it depends on `serve` for that order)."""
    sinks: list[SchedulerReports] = []

    def make(ray_side: FakeSchedulerHandle,
             on_assignments: Callable[[list[Assignment]], None] | None = None,
             ) -> SchedulerReports:
        sink = SchedulerReports(Preset(ray_side), AgentId("n1"), on_assignments)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


class Proxy:
    """A TCP forwarder that the test can cut, as a broken network would."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.port = 0

    async def start(self) -> None:
        server = await asyncio.start_server(self._pair, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]

    async def _pair(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.links.append((writer, up_writer))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer),
                             return_exceptions=True)

    def cut(self) -> None:
        for down, up in self.links:
            down.transport.abort()
            up.transport.abort()
        self.links.clear()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def opened(sink: SchedulerReports) -> None:
    sink.open_channel()
    await async_wait_until(lambda: sink.on_channel, bool, what="the channel open")


async def behind_a_proxy(
        serve: Serve, agent_side: AgentSide, handler: Recorder,
) -> tuple[ReportServer, Proxy, FakeSchedulerHandle, SchedulerReports, list[Assignment]]:
    """A server for `handler`, and agent n1's sink reaching it through a proxy the test can
    cut; the last item collects the assignments the sink receives."""
    server = await serve(handler)
    assert server.address is not None
    proxy = Proxy(server.address.port)
    await proxy.start()
    ray_side = FakeSchedulerHandle(server.address.model_copy(update={"port": proxy.port}))
    got: list[Assignment] = []
    return server, proxy, ray_side, agent_side(ray_side, got.extend), got


def reports(n: int) -> list[AttemptReport]:
    """`running` then `succeeded` for actions a0, a1, ..."""
    return [report(f"a{i // 2}", 1, "n1", "running" if i % 2 == 0 else "succeeded",
                   exit_code=None if i % 2 == 0 else 0) for i in range(n)]


async def test_a_frame_carries_one_model_and_an_oversized_frame_is_refused() -> None:
    sent = report("a1", 2, "n1", "failed", exit_code=3)
    stream = asyncio.StreamReader()
    stream.feed_data(encode(sent))
    stream.feed_eof()
    assert AttemptReport.model_validate_json(await read_frame(stream)) == sent
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(stream)
    huge = asyncio.StreamReader()
    huge.feed_data(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(FrameError, match="limit"):
        await read_frame(huge)


async def test_reports_arrive_in_order_and_end_reports_bring_the_next_assignments(
        serve: Serve, agent_side: AgentSide) -> None:
    handler = Recorder({("a3", "succeeded"): [assignment("b1")],
                        ("a7", "succeeded"): [assignment("b2"), assignment("b3")]})
    server = await serve(handler)
    ray_side = FakeSchedulerHandle(server.address)
    got: list[Assignment] = []
    sink = agent_side(ray_side, got.extend)
    await opened(sink)
    sent = reports(40)
    for r in sent:
        sink.report(r)
    await async_wait_until(lambda: len(handler.seen), lambda n: n >= len(sent),
                           what="every report at the server")
    assert handler.seen == sent
    await async_wait_until(lambda: [a.action_id for a in got],
                           lambda ids: ids == ["b1", "b2", "b3"],
                           what="the answers' assignments")
    assert sink.on_channel and ray_side.by_call == []
    assert server.connected == {"n1": 1}


@pytest.mark.parametrize("channel", [True, False], ids=["channel", "ray calls"])
async def test_only_reports_answered_as_written_are_passed_on_as_recorded(
        serve: Serve, agent_side: AgentSide, channel: bool) -> None:
    server = await serve(Recorder())
    ray_side = FakeSchedulerHandle(server.address if channel else None)
    sink = agent_side(ray_side)
    written: list[AttemptReport] = []
    sink.on_recorded = written.append
    if channel:
        await opened(sink)
    sent = reports(6)  # a0, a1 and a2, each running then succeeded
    for r in sent:
        sink.report(r)
    await async_wait_until(lambda: list(written), lambda w: len(w) == 4,
                           what="the written reports passed on")
    assert written == [r for r in sent if r.action_id not in UNWRITTEN]
    assert sink.on_channel is channel


async def test_a_wrong_secret_is_refused_and_reports_go_by_ray_calls_instead(
        serve: Serve, agent_side: AgentSide) -> None:
    handler = Recorder()
    server = await serve(handler)
    assert server.address is not None
    forged = server.address.model_copy(update={"secret": "0" * 32})
    ray_side = FakeSchedulerHandle(forged)
    sink = agent_side(ray_side)
    sent = reports(6)
    for r in sent:
        sink.report(r)
    await async_wait_until(lambda: list(ray_side.by_call), lambda seen: seen == sent,
                           what="the reports by Ray calls")
    assert handler.seen == [] and server.connected == {} and not sink.on_channel


async def test_a_malformed_report_is_answered_with_its_error_and_the_channel_stays_open(
        serve: Serve) -> None:
    handler = Recorder()
    server = await serve(handler)
    assert server.address is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address.port)
    writer.write(encode(ChannelHello(agent_id=AgentId("n1"),
                                     secret=server.address.secret)))
    assert ReportAnswer.model_validate_json(await read_frame(reader)).error == ""
    body_ = b'{"action_id": "a1", "agent_id": "n1", "stage": "running", "time": 0}'
    writer.write(struct.pack(">I", len(body_)) + body_)
    refused = ReportAnswer.model_validate_json(await read_frame(reader))
    assert "attempt" in refused.error and "Field required" in refused.error
    writer.write(encode(report("a1", 1, "n1", "running")))
    assert ReportAnswer.model_validate_json(await read_frame(reader)).error == ""
    writer.write(encode(report("a9", 1, "n2", "running")))  # another agent's report
    foreign = ReportAnswer.model_validate_json(await read_frame(reader))
    assert "channel of agent 'n1'" in foreign.error
    assert handler.keys() == [("a1", "running")], "refused reports are not applied"
    writer.close()


async def test_a_cut_channel_resends_unanswered_reports_and_redelivers_unconfirmed_starts(
        serve: Serve, agent_side: AgentSide) -> None:
    proxy: Proxy | None = None
    cuts = 0

    def cut_at_a2_end(r: AttemptReport) -> None:
        nonlocal cuts
        if (r.action_id, r.stage) == ("a2", "succeeded") and proxy is not None and not cuts:
            cuts += 1
            proxy.cut()  # before the answer goes out: it is lost with the connection

    # a1's end brings a2, which the agent confirms by reporting on it; a2's end brings
    # a3, whose answer is lost in the cut: the server must hand a3 on another way.
    handler = Recorder({("a1", "succeeded"): [assignment("a2")],
                        ("a2", "succeeded"): [assignment("a3")]}, cut_at_a2_end)
    _, proxy, ray_side, sink, got = await behind_a_proxy(serve, agent_side, handler)
    await opened(sink)
    a1, a2 = reports(6)[2:4], reports(6)[4:6]
    for r in a1:
        sink.report(r)
    await async_wait_until(lambda: [a.action_id for a in got], lambda ids: ids == ["a2"],
                           what="a2 on the answer to a1's end")
    for r in a2:
        sink.report(r)
    await async_wait_until(lambda: [a.action_id for a in handler.undelivered],
                           lambda ids: ids == ["a3"], what="a3 handed on after the cut")
    # Sent again on the new channel, or by a Ray call while it was being opened.
    await async_wait_until(
        lambda: handler.keys() + [(r.action_id, r.stage) for r in ray_side.by_call],
        lambda keys: keys.count(("a2", "succeeded")) == 2,
        what="the unanswered end report sent again")
    await opened(sink)
    sink.report(report("a3", 1, "n1", "running"))
    await async_wait_until(handler.keys, lambda keys: keys[-1] == ("a3", "running"),
                           what="a report on the reopened channel")
    assert cuts == 1 and [a.action_id for a in got] == ["a2"]


async def test_pushed_starts_reach_the_agent_between_answers_and_a_cut_hands_on_the_unconfirmed(
        serve: Serve, agent_side: AgentSide) -> None:
    handler = Recorder({("a0", "succeeded"): [assignment("b1")]})
    server, proxy, ray_side, sink, got = await behind_a_proxy(serve, agent_side, handler)
    assert not server.push(AgentId("n1"), [assignment("p0")]), "no channel open yet"
    await opened(sink)
    assert server.push(AgentId("n1"), [assignment("p1"), assignment("p2")])
    for r in reports(4):  # a0 running, a0 succeeded (answered with b1), a1 ...
        sink.report(r)
    assert server.push(AgentId("n1"), [assignment("p3")])
    await async_wait_until(lambda: [a.action_id for a in got],
                           lambda ids: sorted(ids) == ["b1", "p1", "p2", "p3"],
                           what="pushed starts and the answer's assignment")
    # Pushes are not answers: every report was answered in turn, nothing is resent.
    await async_wait_until(lambda: len(handler.seen), lambda n: n == 4, what="4 reports")
    assert ray_side.by_call == [] and not server.push(AgentId("n2"), [assignment("x")])
    sink.report(report("p1", 1, "n1", "running"))  # confirms p1 only
    await async_wait_until(handler.keys, lambda keys: keys[-1] == ("p1", "running"),
                           what="p1 confirmed")
    proxy.cut()
    await async_wait_until(lambda: sorted(a.action_id for a in handler.undelivered),
                           lambda ids: ids == ["b1", "p2", "p3"],
                           what="the unconfirmed starts handed on after the cut")


async def test_a_peer_without_the_secret_cannot_send_a_large_hello(serve: Serve) -> None:
    server = await serve(Recorder())
    assert server.address is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address.port)
    writer.write(struct.pack(">I", 1_000_000))  # announces a 1 MB hello
    assert await reader.read() == b"", "the server should hang up at once"
    writer.close()
