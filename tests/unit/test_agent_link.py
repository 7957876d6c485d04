"""The agent link on real loopback gRPC: admission by per-agent credential, order, loss and
resend, the Ray-call fallback, stops and load on the stream, TLS, message-size limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from agent.links import NamedActor
from agent.uplink import LINGER_REPORTS, SchedulerLink
from mesh.protocol import Assignment, AttemptReport, CancelOutcome, LinkGrant, ReportAnswer
from mesh.schema import Action, ActionId, AgentId, AgentInfo, Load, MeshConfig
from mesh.v1 import MAX_UP
from mesh.v1 import link_pb2 as pb
from mesh.waiting import async_wait_until
from scheduler.core.decisions import Stop
from scheduler.link import LinkServer
from tests.builders import action, agent, load, report
from tests.link_support import LinkClient
from tests.tls_support import throwaway_certificate

# A hang fails within 30 s instead of stalling the run.
pytestmark = pytest.mark.timeout(30)


def assignment(action_id: str, agent_id: str = "n1") -> Assignment:
    return Assignment(action=action(action_id), action_id=ActionId(action_id), attempt=1,
                      agent_id=AgentId(agent_id), assigned_at=1.0)


class Remote:
    """One remote method of a fake actor handle: `.remote(...)` gives an awaitable."""

    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Awaitable[Any]:
        return self.fn(*args)


class FakeSchedulerHandle:
    """Takes reports and load sent by Ray calls, answering reports with nothing to do."""

    def __init__(self) -> None:
        self.by_call: list[AttemptReport] = []
        self.loads: list[Load] = []
        self.report_attempt = Remote(self._report)
        self.report_load = Remote(self._load)

    async def _report(self, r: AttemptReport) -> ReportAnswer:
        self.by_call.append(r)
        return ReportAnswer(recorded=r.action_id not in UNWRITTEN)

    async def _load(self, agent_id: AgentId, sample: Load) -> None:
        self.loads.append(sample)


class Preset(NamedActor):
    def __init__(self, handle: Any) -> None:
        super().__init__("actionmesh.scheduler")
        self.handle = handle

    async def get(self) -> Any:
        return self.handle


# Actions whose reports the fake schedulers answer as taken but not written.
UNWRITTEN = {"a1"}


class Recorder:
    """The scheduler's side of a link server: answers chosen reports with assignments, and
    keeps the load, stop outcomes and undelivered work it is handed."""

    def __init__(self, answers: dict[tuple[str, str], list[Assignment]] | None = None,
                 on_report: Callable[[AttemptReport], None] | None = None) -> None:
        self.seen: list[AttemptReport] = []
        # How many reports each call applied together.
        self.batches: list[int] = []
        self.answers = answers or {}
        self.on_report = on_report
        self.undelivered: list[Assignment] = []
        self.unstopped: list[Stop] = []
        self.loads: list[tuple[AgentId, Load]] = []
        self.stopped: list[tuple[Stop, CancelOutcome]] = []

    def __call__(self, reports: list[AttemptReport]) -> list[ReportAnswer]:
        self.batches.append(len(reports))
        return [self._one(r) for r in reports]

    def _one(self, r: AttemptReport) -> ReportAnswer:
        self.seen.append(r)
        if self.on_report is not None:
            self.on_report(r)
        return ReportAnswer(assignments=self.answers.pop((r.action_id, r.stage), []),
                            recorded=r.action_id not in UNWRITTEN)

    def keys(self) -> list[tuple[str, str]]:
        return [(r.action_id, r.stage) for r in self.seen]

    def hand_on(self, assignments: list[Assignment], stops: list[Stop]) -> None:
        self.undelivered.extend(assignments)
        self.unstopped.extend(stops)


class Served:
    """A link server on loopback and the agents it knows (n1 and n2 at first)."""

    def __init__(self, server: LinkServer, handler: Recorder,
                 agents: dict[AgentId, AgentInfo]) -> None:
        self.server = server
        self.handler = handler
        self.agents = agents

    def grant(self, agent_id: str = "n1", port: int | None = None) -> LinkGrant:
        found = self.server.grant(self.agents[AgentId(agent_id)])
        assert found is not None
        return found if port is None else found.model_copy(update={"port": port})


Serve = Callable[..., Awaitable[Served]]
AgentSide = Callable[..., SchedulerLink]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Starts link servers on loopback; closes every one after the test."""
    servers: list[LinkServer] = []

    async def start(handler: Recorder, **config: Any) -> Served:
        agents = {AgentId(n): agent(n) for n in ("n1", "n2")}
        server = LinkServer(MeshConfig(state_dir=str(tmp_path), **config), "127.0.0.1",
                            agents.get, handler, lambda a, x: handler.loads.append((a, x)),
                            lambda stop, outcome: handler.stopped.append((stop, outcome)),
                            handler.hand_on)
        await server.start()
        servers.append(server)
        return Served(server, handler, agents)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def agent_side(serve: Serve) -> AsyncIterator[AgentSide]:
    """Agent n1's link, finding the scheduler through a fake handle; closed after the test,
    before the servers (it depends on `serve` for that order)."""
    links: list[SchedulerLink] = []

    def make(ray_side: FakeSchedulerHandle,
             on_assignments: Callable[[list[Assignment]], None] | None = None,
             on_stop: Callable[[ActionId, int, str, bool], Awaitable[CancelOutcome]] | None = None,
             agent_id: str = "n1", **options: Any) -> SchedulerLink:
        link = SchedulerLink(Preset(ray_side), AgentId(agent_id), on_assignments, on_stop,
                             **options)
        links.append(link)
        return link

    yield make
    for link in links:
        await link.close()


class Proxy:
    """A TCP forwarder that the test can cut, as a broken network would."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.port = 0

        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (again, on the same port once it has one)."""
        self.server = await asyncio.start_server(self._pair, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, and cut what is open: a blocked port."""
        assert self.server is not None
        self.server.close()
        self.cut()
        await self.server.wait_closed()

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


async def opened(link: SchedulerLink, grant: LinkGrant) -> None:
    link.grant(grant)
    await async_wait_until(lambda: link.on_stream, bool, what="the stream open")


async def behind_a_proxy(
        serve: Serve, agent_side: AgentSide, handler: Recorder,
) -> tuple[Served, Proxy, FakeSchedulerHandle, SchedulerLink, list[Assignment]]:
    """A server for `handler`, and agent n1's link reaching it through a proxy the test can
    cut; the last item collects the assignments the link receives."""
    served = await serve(handler)
    proxy = Proxy(served.server.port)
    await proxy.start()
    ray_side = FakeSchedulerHandle()
    got: list[Assignment] = []
    return served, proxy, ray_side, agent_side(ray_side, got.extend), got


def reports(n: int) -> list[AttemptReport]:
    """`running` then `succeeded` for actions a0, a1, ..."""
    return [report(f"a{i // 2}", 1, "n1", "running" if i % 2 == 0 else "succeeded",
                   exit_code=None if i % 2 == 0 else 0) for i in range(n)]


async def test_reports_arrive_in_order_and_end_reports_bring_the_next_assignments(
        serve: Serve, agent_side: AgentSide) -> None:
    handler = Recorder({("a3", "succeeded"): [assignment("b1")],
                        ("a7", "succeeded"): [assignment("b2"), assignment("b3")]})
    served = await serve(handler)
    ray_side = FakeSchedulerHandle()
    got: list[Assignment] = []
    link = agent_side(ray_side, got.extend)
    await opened(link, served.grant())
    sent = reports(40)
    for r in sent:
        link.report(r)
    await async_wait_until(lambda: len(handler.seen), lambda n: n >= len(sent),
                           what="every report at the server")
    assert handler.seen == sent
    assert handler.batches == [len(sent)], "reports that come together are applied as one"
    await async_wait_until(lambda: [a.action_id for a in got],
                           lambda ids: ids == ["b1", "b2", "b3"],
                           what="the answers' assignments")
    assert got[0] == assignment("b1"), "an assignment crosses the stream unchanged"
    assert link.on_stream and ray_side.by_call == []
    assert served.server.on_stream(AgentId("n1")) and not served.server.on_stream(AgentId("n2"))


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "ray calls"])
async def test_only_reports_answered_as_written_are_passed_on_as_recorded(
        serve: Serve, agent_side: AgentSide, stream: bool) -> None:
    served = await serve(Recorder())
    ray_side = FakeSchedulerHandle()
    link = agent_side(ray_side)
    written: list[AttemptReport] = []
    link.on_recorded = written.append
    if stream:
        await opened(link, served.grant())
    sent = reports(6)  # a0, a1 and a2, each running then succeeded
    for r in sent:
        link.report(r)
    await async_wait_until(lambda: list(written), lambda w: len(w) == 4,
                           what="the written reports passed on")
    assert written == [r for r in sent if r.action_id not in UNWRITTEN]
    assert link.on_stream is stream


async def test_a_stream_speaks_only_for_the_agent_whose_credential_opened_it(
        serve: Serve) -> None:
    handler = Recorder()
    served = await serve(handler)
    n1 = served.grant("n1")
    # n1's valid credential, claiming to be n2: refused before a word is read.
    for claimed, credential in [("n2", None), ("n1", "0" * 64), ("n1", ""), ("", None)]:
        with pytest.raises(aio.AioRpcError) as refused:
            await LinkClient(n1, claimed, credential).open()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (claimed, credential)
    # Admitted as n1, a report is n1's whatever it says: the wire has no agent to claim.
    client = await LinkClient(n1, "n1").open()
    assert await client.ask(report("a1", 1, "n2", "running")) == []
    assert [r.agent_id for r in handler.seen] == ["n1"]
    await client.close()


async def test_a_credential_dies_with_its_agent_process(serve: Serve) -> None:
    handler = Recorder()
    served = await serve(handler)
    old = served.grant("n1")
    # n1 restarted: the same id, another process. The old credential no longer opens a
    # stream; the new agent's does. An agent that left the pool has none.
    served.agents[AgentId("n1")] = served.agents[AgentId("n1")].model_copy(update={"pid": 2})
    with pytest.raises(aio.AioRpcError) as refused:
        await LinkClient(old, "n1").open()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await (await LinkClient(served.grant("n1"), "n1").open()).close()
    n2 = served.grant("n2")
    del served.agents[AgentId("n2")]
    with pytest.raises(aio.AioRpcError) as gone:
        await LinkClient(n2, "n2").open()
    assert gone.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert handler.seen == []


async def test_a_malformed_report_is_answered_with_its_error_and_the_stream_stays_open(
        serve: Serve) -> None:
    handler = Recorder()
    served = await serve(handler)
    client = await LinkClient(served.grant(), "n1").open()
    await client.call.write(pb.AgentMessage(reports=[pb.AttemptReport(
        action_id="a1", attempt=0, stage=pb.REPORT_STAGE_RUNNING)]))
    refused = await client.answer()
    assert "attempt" in refused.error and "greater than or equal to 1" in refused.error
    await client.call.write(pb.AgentMessage(reports=[pb.AttemptReport(
        action_id="a1", attempt=1, stage=pb.REPORT_STAGE_UNSPECIFIED)]))
    assert "stage" in (await client.answer()).error
    assert await client.ask(report("a1", 1, "n1", "running")) == []
    assert handler.keys() == [("a1", "running")], "refused reports are not applied"
    await client.close()


class Failing(Recorder):
    """Fails on batches holding action b1: raises, or answers only the first report."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def __call__(self, reports: list[AttemptReport]) -> list[ReportAnswer]:
        answers = super().__call__(reports)
        if any(r.action_id == "b1" for r in reports):
            if self.how == "raises":
                raise RuntimeError("a bug")
            return answers[:1]
        return answers


@pytest.mark.parametrize("how", ["raises", "answers too few"])
async def test_a_batch_that_fails_to_apply_answers_each_report_with_an_error(
        serve: Serve, how: str) -> None:
    served = await serve(Failing(how))
    client = await LinkClient(served.grant(), "n1").open()
    await client.send(report("a1", 1, "n1", "running"), report("b1", 1, "n1", "running"))
    answers: list[pb.ReportAnswer] = []
    while len(answers) < 2:
        answers += (await client.read()).answers
    # No answer is taken for another report's, and the stream stays open.
    assert all("the scheduler failed to apply it" in a.error for a in answers), answers
    assert await client.ask(report("c1", 1, "n1", "running")) == []
    await client.close()


async def test_an_oversized_message_closes_only_its_stream_with_the_reason_logged(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="actionmesh.scheduler.link")
    handler = Recorder()
    served = await serve(handler)
    big = await LinkClient(served.grant("n1"), "n1",
                           options=[("grpc.max_send_message_length", 2 * MAX_UP)]).open()
    other = await LinkClient(served.grant("n2"), "n2").open()
    await big.send(report("a1", 1, "n1", "failed", reason="x" * MAX_UP))
    with pytest.raises(aio.AioRpcError) as closed:
        await big.read()
    assert closed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await async_wait_until(lambda: caplog.text, lambda text: "stream of agent n1 closed" in text,
                           what="the reason in the log")
    assert await other.ask(report("b1", 1, "n2", "running")) == []
    assert handler.keys() == [("b1", "running")]
    await big.close()
    await other.close()


async def test_a_cut_stream_resends_unanswered_reports_and_redelivers_unconfirmed_starts(
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
    served, proxy, ray_side, link, got = await behind_a_proxy(serve, agent_side, handler)
    await opened(link, served.grant(port=proxy.port))
    a1, a2 = reports(6)[2:4], reports(6)[4:6]
    for r in a1:
        link.report(r)
    await async_wait_until(lambda: [a.action_id for a in got], lambda ids: ids == ["a2"],
                           what="a2 on the answer to a1's end")
    for r in a2:
        link.report(r)
    await async_wait_until(lambda: [a.action_id for a in handler.undelivered],
                           lambda ids: ids == ["a3"], what="a3 handed on after the cut")
    # Sent again on the new stream, or by a Ray call while it was being opened.
    await async_wait_until(
        lambda: handler.keys() + [(r.action_id, r.stage) for r in ray_side.by_call],
        lambda keys: keys.count(("a2", "succeeded")) == 2,
        what="the unanswered end report sent again")
    await async_wait_until(lambda: link.on_stream, bool, what="the stream open again")
    link.report(report("a3", 1, "n1", "running"))
    await async_wait_until(handler.keys, lambda keys: keys[-1] == ("a3", "running"),
                           what="a report on the reopened stream")
    assert cuts == 1 and [a.action_id for a in got] == ["a2"]


async def test_pushed_starts_reach_the_agent_between_answers_and_a_cut_hands_on_the_unconfirmed(
        serve: Serve, agent_side: AgentSide) -> None:
    handler = Recorder({("a0", "succeeded"): [assignment("b1")]})
    served, proxy, ray_side, link, got = await behind_a_proxy(serve, agent_side, handler)
    server = served.server
    assert server.push(AgentId("n1"), [assignment("p0")]) == [assignment("p0")], "no stream"
    await opened(link, served.grant(port=proxy.port))
    assert server.push(AgentId("n1"), [assignment("p1"), assignment("p2")]) == []
    for r in reports(4):  # a0 running, a0 succeeded (answered with b1), a1 ...
        link.report(r)
    assert server.push(AgentId("n1"), [assignment("p3")]) == []
    await async_wait_until(lambda: [a.action_id for a in got],
                           lambda ids: sorted(ids) == ["b1", "p1", "p2", "p3"],
                           what="pushed starts and the answer's assignment")
    # Pushes are not answers: every report was answered in turn, nothing is resent.
    await async_wait_until(lambda: len(handler.seen), lambda n: n == 4, what="4 reports")
    assert ray_side.by_call == []
    link.report(report("p1", 1, "n1", "running"))  # confirms p1 only
    await async_wait_until(handler.keys, lambda keys: keys[-1] == ("p1", "running"),
                           what="p1 confirmed")
    proxy.cut()
    await async_wait_until(lambda: sorted(a.action_id for a in handler.undelivered),
                           lambda ids: ids == ["b1", "p2", "p3"],
                           what="the unconfirmed starts handed on after the cut")


async def test_while_the_port_is_blocked_reports_go_by_ray_calls_and_the_stream_comes_back(
        serve: Serve, agent_side: AgentSide) -> None:
    handler = Recorder()
    served, proxy, ray_side, link, _ = await behind_a_proxy(serve, agent_side, handler)
    await proxy.close()  # nothing listens: the stream cannot open
    link.grant(served.grant(port=proxy.port))
    sent = reports(4)
    for r in sent:
        link.report(r)
    await async_wait_until(lambda: list(ray_side.by_call), lambda seen: seen == sent,
                           what="the reports by Ray calls")
    assert not link.on_stream and handler.seen == []
    await proxy.start()  # the same port, open again
    await async_wait_until(lambda: link.on_stream, bool, timeout=20,
                           what="the stream open again (after its backoff)")
    link.report(report("a9", 1, "n1", "running"))
    await async_wait_until(handler.keys, lambda keys: keys == [("a9", "running")],
                           what="the next report on the stream")
    assert len(ray_side.by_call) == len(sent)


async def test_stops_and_load_ride_the_stream(serve: Serve, agent_side: AgentSide) -> None:
    handler = Recorder()
    served = await serve(handler)
    asked: list[tuple[ActionId, int, str, bool]] = []

    async def on_stop(action_id: ActionId, attempt: int, reason: str, held_only: bool,
                      ) -> CancelOutcome:
        asked.append((action_id, attempt, reason, held_only))
        return "unknown"

    ray_side = FakeSchedulerHandle()
    link = agent_side(ray_side, None, on_stop)
    await opened(link, served.grant())
    stop = Stop(ActionId("a1"), 2, AgentId("n1"), "cancelled")
    # A take-back and a cancel of one attempt on the way at once: each answer is its own.
    held = Stop(ActionId("a1"), 2, AgentId("n1"), "taken back", held_only=True)
    assert served.server.stop(held) and served.server.stop(stop)
    await async_wait_until(lambda: list(handler.stopped), lambda s: len(s) == 2,
                           what="the stops' outcomes")
    assert asked == [("a1", 2, "taken back", True), ("a1", 2, "cancelled", False)]
    assert sorted(handler.stopped, key=lambda s: s[0].held_only) == [
        (stop, "unknown"), (held, "unknown")]
    sample = load(cpu_percent=12.5, at=3.0)
    link.load(sample)
    await async_wait_until(lambda: list(handler.loads), bool, what="the load at the server")
    assert handler.loads == [("n1", sample)] and ray_side.loads == []
    assert not served.server.stop(Stop(ActionId("a1"), 1, AgentId("n2"), "x")), "no stream"


async def test_while_the_agent_holds_work_its_reports_wait_to_go_together(
        serve: Serve, agent_side: AgentSide) -> None:
    handler = Recorder()
    served = await serve(handler)
    holding = True
    link = agent_side(FakeSchedulerHandle(), linger=30.0, holds_work=lambda: holding)
    other = agent_side(FakeSchedulerHandle(), agent_id="n2", linger=30.0,
                       holds_work=lambda: False)
    await opened(link, served.grant())
    await opened(other, served.grant("n2"))
    first, second = reports(2)
    link.report(first)
    # Reported after it, from an agent holding nothing: it goes at once, the first waits.
    later = report("b0", 1, "n2", "running")
    other.report(later)
    await async_wait_until(lambda: list(handler.seen), lambda seen: later in seen,
                           what="the report of the agent that holds nothing")
    assert first not in handler.seen
    # The held work ran out: what waits goes with the next report, well before the linger.
    holding = False
    link.report(second)
    await async_wait_until(lambda: list(handler.seen), lambda seen: second in seen,
                           what="both reports")
    assert handler.seen == [later, first, second] and handler.batches[-1] == 2


async def lingering(serve: Serve, agent_side: AgentSide) -> tuple[Recorder, SchedulerLink]:
    """Agent n1's open link, whose reports may wait 30 s: it always holds work."""
    handler = Recorder()
    served = await serve(handler)
    link = agent_side(FakeSchedulerHandle(), linger=30.0, holds_work=lambda: True)
    await opened(link, served.grant())
    return handler, link


async def test_load_does_not_wait_and_takes_waiting_reports_along(
        serve: Serve, agent_side: AgentSide) -> None:
    handler, link = await lingering(serve, agent_side)
    sent = reports(2)
    for r in sent:
        link.report(r)
    sample = load(cpu_percent=50.0, at=4.0)
    link.load(sample)
    await async_wait_until(lambda: list(handler.loads), bool, what="the load at the server")
    await async_wait_until(lambda: list(handler.seen), lambda seen: seen == sent,
                           what="the reports that waited")
    assert handler.loads == [("n1", sample)]


async def test_a_message_worth_of_reports_does_not_wait(
        serve: Serve, agent_side: AgentSide) -> None:
    handler, link = await lingering(serve, agent_side)
    sent = reports(LINGER_REPORTS)
    for r in sent:
        link.report(r)
    await async_wait_until(lambda: list(handler.seen), lambda seen: seen == sent,
                           what="a message's worth of reports, before the linger ends")
    assert handler.batches == [LINGER_REPORTS]


async def test_with_a_certificate_the_stream_is_tls_and_plaintext_is_refused(
        serve: Serve, agent_side: AgentSide, tmp_path: Path) -> None:
    cert, key = throwaway_certificate(tmp_path, "scheduler.mesh.test")
    handler = Recorder()
    served = await serve(handler, link_cert=cert, link_key=key,
                         link_server_name="scheduler.mesh.test")
    grant = served.grant()
    assert grant.root_certificate.startswith("-----BEGIN CERTIFICATE-----")
    link = agent_side(FakeSchedulerHandle())
    await opened(link, grant)
    link.report(report("a1", 1, "n1", "running"))
    await async_wait_until(handler.keys, lambda keys: keys == [("a1", "running")],
                           what="a report over TLS")
    plain = LinkClient(grant.model_copy(update={"root_certificate": ""}), "n1")
    with pytest.raises((aio.AioRpcError, TimeoutError)):
        await plain.open()
    await plain.close()
    (tmp_path / "other").mkdir()
    other, _ = throwaway_certificate(tmp_path / "other", "scheduler.mesh.test")
    wrong = LinkClient(grant.model_copy(update={"root_certificate": Path(other).read_text()}),
                       "n1")
    with pytest.raises((aio.AioRpcError, TimeoutError)):
        await wrong.open()
    await wrong.close()


async def test_a_second_stream_of_an_agent_closes_the_first_and_takes_its_work(
        serve: Serve) -> None:
    handler = Recorder()
    served = await serve(handler)
    first = await LinkClient(served.grant(), "n1").open()
    assert served.server.push(AgentId("n1"), [assignment("p1")]) == []
    assert [a.action_id for a in (await first.read()).assignments] == ["p1"]
    second = await LinkClient(served.grant(), "n1").open()
    assert await asyncio.wait_for(first.call.read(), 10) is aio.EOF, "the first is closed"
    await async_wait_until(lambda: [a.action_id for a in handler.undelivered],
                           lambda ids: ids == ["p1"], what="p1, unconfirmed, handed on")
    assert served.server.push(AgentId("n1"), [assignment("p2")]) == []
    assert [a.action_id for a in (await second.read()).assignments] == ["p2"]
    await first.close()
    await second.close()


async def test_an_assignment_the_agent_cannot_read_is_refused_back(
        serve: Serve, agent_side: AgentSide) -> None:
    handler = Recorder()
    served = await serve(handler)
    got: list[Assignment] = []
    link = agent_side(FakeSchedulerHandle(), got.extend)
    await opened(link, served.grant())
    # As a scheduler of another version might send it: -1 CPUs passes no check here.
    bad = Assignment.model_construct(action=Action.model_construct(command=["true"], cpus=-1.0),
                                     action_id=ActionId("bad"), attempt=1,
                                     agent_id=AgentId("n1"), assigned_at=1.0)
    assert served.server.push(AgentId("n1"), [bad, assignment("good")]) == []
    await async_wait_until(handler.keys, lambda keys: keys == [("bad", "refused")],
                           what="the refusal")
    assert "cpus" in handler.seen[0].reason
    assert [a.action_id for a in got] == ["good"]


async def test_a_stop_outcome_not_understood_leaves_the_stop_to_go_another_way(
        serve: Serve) -> None:
    handler = Recorder()
    served = await serve(handler)
    client = await LinkClient(served.grant(), "n1").open()
    stop = Stop(ActionId("a1"), 1, AgentId("n1"), "cancelled")
    assert served.server.stop(stop)
    assert [x.action_id for x in (await client.read()).stops] == ["a1"]
    await client.send(stopped=[pb.Stopped(action_id="a1", attempt=1,
                                          outcome=pb.STOP_OUTCOME_UNSPECIFIED)])
    assert await client.ask(report("a1", 1, "n1", "running")) == []  # the message was read
    assert handler.stopped == []
    await client.close()
    await async_wait_until(lambda: list(handler.unstopped), lambda s: s == [stop],
                           what="the stop handed on")
