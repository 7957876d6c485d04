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

from mesh import errors
from mesh.arrival import arrived, as_json
from mesh.clientlink import CONNECT_TIMEOUT, RETRY_FIRST, ClientLink, LinkDown
from mesh.errors import (
    InvalidInput,
    MeshError,
    SchedulerUnavailable,
    Unplaceable,
    WaitTimeout,
)
from mesh.protocol import LinkGrant
from mesh.rpcerrors import TRAILER_ITEMS, TRAILER_TEXT
from mesh.schema import Action, ActionId, SubmitOutcome
from scheduler.clientlink import ClientLinkService
from tests.tls_support import throwaway_certificate


@dataclass
class Scheduler:
    """The actor's two calls, answering what a test sets."""

    fail: Exception | None = None
    status: str | None = None
    stall: float = 0.0  # seconds `result` takes to answer
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
        await asyncio.sleep(self.stall)
        if self.fail is not None:
            raise self.fail
        return self.status


@dataclass
class Served:
    scheduler: Scheduler
    service: ClientLinkService
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
    service = ClientLinkService(scheduler.run, scheduler.result)
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


def client(grants: Callable[[], Any], clock: Clock | None = None, **options: Any,
           ) -> ClientLink:
    # A generous first wait: a loaded machine may take more than the default to connect.
    return ClientLink(grants, clock or Clock(), **{"connect_wait": 10.0, **options})


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


def every_error() -> list[MeshError]:
    """One of each of our errors, with the fields those that have them carry."""
    made: list[MeshError] = []
    for kind in vars(errors).values():
        if not (isinstance(kind, type) and issubclass(kind, MeshError)):
            continue
        if issubclass(kind, InvalidInput):
            made.append(kind("invalid action: command: too short", [("command", "too short")]))
        elif issubclass(kind, Unplaceable):
            made.append(kind("no agent could run it", ["a-1", "a-2"]))
        else:
            made.append(kind(f"a {kind.__name__}"))
    return made


@pytest.mark.parametrize("way", ["run", "result"])
@pytest.mark.parametrize("error", every_error(), ids=lambda e: type(e).__name__)
async def test_each_of_our_errors_arrives_as_raised(served: Served, error: MeshError,
                                                    way: str) -> None:
    served.scheduler.fail = error
    link = client(served.grant)
    call = (lambda: link.run(as_json(ACTION), True, 0.1)) if way == "run" else (
        lambda: link.result("x", 0.1))
    with pytest.raises(type(error)) as raised:
        await in_thread(call)
    assert str(raised.value) == str(error) and type(raised.value) is type(error)
    if not isinstance(error, WaitTimeout):  # (its last observation stays behind)
        assert vars(raised.value) == vars(error)  # the fields, the ids
    assert link.serving, "an error of ours is an answer: the link stays"
    link.close()


async def test_a_long_list_of_bad_fields_still_arrives_as_bad_input(served: Served) -> None:
    fields = [(f"env.VAR_{i:04d}", "x" * 300) for i in range(500)]
    served.scheduler.fail = InvalidInput("invalid action: " + "; ".join(
        f"{f}: {w}" for f, w in fields), fields)
    with pytest.raises(InvalidInput) as raised:
        await in_thread(client(served.grant).result, "x", 0.1)
    assert raised.value.errors[0] == ("env.VAR_0000", "x" * TRAILER_TEXT)
    assert len(raised.value.errors) == TRAILER_ITEMS


async def test_a_bug_on_the_scheduler_side_is_not_passed_off_as_ours(served: Served) -> None:
    served.scheduler.fail = RuntimeError("boom")
    link = client(served.grant)
    with pytest.raises(LinkDown, match="INTERNAL"):
        await in_thread(link.result, "x", 0.1)
    # That call goes over Ray; the link stays for the next (another thread's call on it
    # would otherwise be cut off).
    assert link.serving
    served.scheduler.fail = None
    assert await in_thread(link.result, "x", 0.1) is None
    link.close()


async def test_an_unanswered_call_is_the_scheduler_unavailable_not_a_link_down(
        served: Served) -> None:
    served.scheduler.stall = 30.0
    link = client(served.grant, call_timeout=0.2)
    with pytest.raises(SchedulerUnavailable, match=r"no answer within 0\.3s"):
        await in_thread(link.result, "x", 0.1)
    link.close()


async def test_a_wrong_token_is_refused_before_the_call_runs(served: Served) -> None:
    link = client(lambda: served.grant("w" * 43))
    with pytest.raises(LinkDown, match="UNAUTHENTICATED"):
        await in_thread(link.run, as_json(ACTION), True, 1.0)
    assert served.scheduler.seen == []


async def test_no_grant_backs_off_doubling_until_a_call_gets_through(served: Served) -> None:
    asked: list[float] = []
    clock = Clock()

    def no_such_method() -> LinkGrant:
        raise AttributeError("an older scheduler: no client_grant")

    answers: list[Callable[[], LinkGrant | None]] = [
        lambda: None, no_such_method, lambda: served.grant("w" * 43), served.grant,
        lambda: None, lambda: None]

    def grants() -> LinkGrant | None:
        asked.append(clock.now)
        return answers.pop(0)()

    link = client(grants, clock)

    async def down(why: str) -> None:
        with pytest.raises(LinkDown, match=why):
            await in_thread(link.result, "x", 0.1)

    await down("no client link")  # no grant: Ray for 1 s
    await down("failed lately")  # within the pause: not even asked
    clock.now += RETRY_FIRST
    await down("no client link")  # it raised: Ray for 2 s
    clock.now += RETRY_FIRST
    await down("failed lately")
    clock.now += RETRY_FIRST
    await down("UNAUTHENTICATED")  # connected, refused: Ray for 4 s
    clock.now += 2 * RETRY_FIRST
    await down("failed lately")
    clock.now += 2 * RETRY_FIRST
    assert await in_thread(link.result, "x", 0.1) is None  # through: the pause starts over
    assert asked == [100.0, 101.0, 103.0, 107.0]
    link.close()
    await down("no client link")
    clock.now += RETRY_FIRST
    await down("no client link")
    assert asked[-2:] == [clock.now - RETRY_FIRST, clock.now], "1 s, not 8"


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

        untrusting = client(grants, clock, connect_wait=0.1)
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
