"""The client link over a real gRPC server: the scheduler's end (scheduler/clientlink.py) in
front of stand-ins for the actor's calls, the client's end (mesh/clientlink.py) calling it
from a thread, as a user's process does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from mesh.arrival import arrived, as_json
from mesh.clientlink import CONNECT_TIMEOUT, RETRY_FIRST, ClientLink, LinkDown
from mesh.errors import InvalidInput, NotFound, SchedulerUnavailable, Unplaceable
from mesh.protocol import LinkGrant
from mesh.schema import Action, ActionId, SubmitOutcome
from scheduler.clientlink import ClientLink as ClientService
from tests.tls_support import throwaway_certificate


@dataclass
class Scheduler:
    """The actor's two calls, answering what a test sets."""

    fail: Exception | None = None
    status: str | None = None
    seen: list[tuple[Any, ...]] = field(default_factory=list)

    async def run(self, spec: str, reject: bool, wait: float,
                  ) -> tuple[SubmitOutcome, str | None]:
        self.seen.append(("run", spec, reject, wait))
        if self.fail is not None:
            raise self.fail
        action = arrived(Action, spec, "action")
        assert action.id is not None
        return SubmitOutcome(action_id=action.id, accepted=True, created=True), self.status

    async def result(self, action_id: ActionId, wait: float) -> str | None:
        self.seen.append(("result", action_id, wait))
        if self.fail is not None:
            raise self.fail
        return self.status


@dataclass
class Served:
    scheduler: Scheduler
    service: ClientService
    server: aio.Server
    port: int
    certificate: str = ""

    def grant(self, token: str | None = None) -> LinkGrant:
        return LinkGrant(host="127.0.0.1", port=self.port,
                         credential=token or self.service.token,
                         root_certificate=self.certificate,
                         server_name=NAME if self.certificate else "")


NAME = "scheduler.mesh.test"


async def serve(scheduler: Scheduler, tls: tuple[str, str] | None = None) -> Served:
    """The service on a port of its own; with `tls` (certificate and key files), TLS."""
    service = ClientService(scheduler.run, scheduler.result)
    server = aio.server()
    server.add_generic_rpc_handlers([service.handler()])
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        cert, key = (Path(f).read_bytes() for f in tls)
        port = server.add_secure_port("127.0.0.1:0",
                                      grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    return Served(scheduler, service, server, port, "" if tls is None else cert.decode())


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    found = await serve(Scheduler())
    yield found
    await found.server.stop(grace=None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def client(grants: Callable[[], Any], clock: Clock | None = None) -> ClientLink:
    return ClientLink(grants, clock or Clock())


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking client call, off the loop that serves it."""
    return await asyncio.to_thread(fn, *args)


ACTION = Action(command=["true"]).identified()


async def test_run_and_result_cross_with_the_token(served: Served) -> None:
    link = client(served.grant)
    served.scheduler.status = '{"done": true}'
    outcome, status = await in_thread(link.run, as_json(ACTION), False, 2.5)
    assert arrived(SubmitOutcome, outcome, "outcome") == SubmitOutcome(
        action_id=ACTION.id, accepted=True, created=True)
    assert status == '{"done": true}'
    served.scheduler.status = None
    assert await in_thread(link.result, "a-1", 0.5) is None
    assert served.scheduler.seen == [("run", as_json(ACTION), False, 2.5),
                                     ("result", "a-1", 0.5)]
    link.close()


@pytest.mark.parametrize("error", [
    InvalidInput("invalid action: command: too short", [("command", "too short")]),
    NotFound("no action with id 'x'"),
    Unplaceable("no agent could run it", ["a-1"]),
    SchedulerUnavailable("not serving yet"),
], ids=lambda e: type(e).__name__)
async def test_our_errors_arrive_as_raised(served: Served, error: Exception) -> None:
    served.scheduler.fail = error
    link = client(served.grant)
    with pytest.raises(type(error)) as raised:
        await in_thread(link.result, "x", 0.1)
    assert str(raised.value) == str(error) and type(raised.value) is type(error)
    assert vars(raised.value) == vars(error)  # the fields, the ids
    assert link._channel is not None, "an error of ours is an answer: the link stays"
    link.close()


async def test_a_bug_on_the_scheduler_side_is_not_passed_off_as_ours(served: Served) -> None:
    served.scheduler.fail = RuntimeError("boom")
    with pytest.raises(LinkDown, match="INTERNAL"):
        await in_thread(client(served.grant).result, "x", 0.1)


async def test_a_wrong_token_is_refused_before_the_call_runs(served: Served) -> None:
    link = client(lambda: served.grant("w" * 43))
    with pytest.raises(LinkDown, match="UNAUTHENTICATED"):
        await in_thread(link.run, as_json(ACTION), True, 1.0)
    assert served.scheduler.seen == []


async def test_no_grant_backs_off_then_asks_again(served: Served) -> None:
    asked: list[float] = []
    clock = Clock()
    answers: list[LinkGrant | None] = [None, served.grant()]

    def grants() -> LinkGrant | None:
        asked.append(clock.now)
        return answers.pop(0)

    link = client(grants, clock)
    for _ in range(2):  # the second within the pause: not even asked
        with pytest.raises(LinkDown):
            await in_thread(link.result, "x", 0.1)
    assert asked == [100.0]
    clock.now += RETRY_FIRST
    assert await in_thread(link.result, "x", 0.1) is None
    assert asked == [100.0, 100.0 + RETRY_FIRST]
    link.close()


async def test_a_scheduler_gone_sends_calls_elsewhere_until_a_new_one_grants() -> None:
    first = await serve(Scheduler())
    clock = Clock()
    grants = [first.grant()]
    link = client(lambda: grants[-1], clock)
    assert await in_thread(link.result, "x", 0.1) is None
    await first.server.stop(grace=None)
    with pytest.raises(LinkDown, match="UNAVAILABLE"):
        await in_thread(link.result, "x", 0.1)
    second = await serve(Scheduler(status="{}"))  # a restarted scheduler: new port, token
    try:
        grants.append(second.grant())
        with pytest.raises(LinkDown, match="failed lately"):
            await in_thread(link.result, "x", 0.1)
        clock.now += RETRY_FIRST
        assert await in_thread(link.result, "x", 0.1) == "{}"
        assert second.scheduler.seen == [("result", "x", 0.1)]
    finally:
        link.close()
        await second.server.stop(grace=None)


async def test_with_a_certificate_the_calls_are_tls_and_trust_only_it(tmp_path: Path) -> None:
    served = await serve(Scheduler(status="{}"), throwaway_certificate(tmp_path, NAME))
    try:
        assert served.grant().root_certificate.startswith("-----BEGIN CERTIFICATE-----")
        link = client(served.grant)
        assert await in_thread(link.result, "x", 0.1) == "{}"
        link.close()
        (tmp_path / "other").mkdir()
        other, _ = throwaway_certificate(tmp_path / "other", NAME)
        wrong = served.grant().model_copy(update={"root_certificate": Path(other).read_text()})
        asked: list[float] = []
        clock = Clock()

        def grants() -> LinkGrant:
            asked.append(clock.now)
            return wrong

        untrusting = client(grants, clock)
        # Calls go elsewhere while it tries, then for a pause once it gives up on it.
        for step, why in ((0.0, "is connecting"), (CONNECT_TIMEOUT / 2, "is connecting"),
                          (CONNECT_TIMEOUT / 2 + 0.1, "did not connect"),
                          (RETRY_FIRST / 2, "failed lately")):
            clock.now += step
            with pytest.raises(LinkDown, match=why):
                await in_thread(untrusting.result, "x", 0.1)
            assert not untrusting.serving
        assert asked == [100.0]
        clock.now += RETRY_FIRST
        with pytest.raises(LinkDown, match="is connecting"):
            await in_thread(untrusting.result, "x", 0.1)
        assert len(asked) == 2
        untrusting.close()
        assert served.scheduler.seen == [("result", "x", 0.1)]
    finally:
        await served.server.stop(grace=None)
