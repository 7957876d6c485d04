"""The gateway's bound on open streams (max_streams), with a stand-in for the scheduler
that never answers a submission, so that every admitted Submit stays open."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from mesh.errors import Busy, Unplaceable
from mesh.gateway import Gateway
from mesh.schema import ActionId, SubmitOutcome
from mesh.v1 import gateway_pb2 as gpb
from mesh.v1 import link_pb2 as pb


class Unanswered:
    """`scheduler.submit_and_follow.remote(...)`, whose answers wait until `refuse_all`."""

    def __init__(self) -> None:
        self.sent: list[concurrent.futures.Future[Any]] = []
        self.submit_and_follow = self

    def remote(self, *args: Any) -> Unanswered:
        self.sent.append(concurrent.futures.Future())
        return self

    def future(self) -> concurrent.futures.Future[Any]:
        return self.sent[-1]

    def refuse_all(self) -> None:
        for answer in self.sent:
            answer.set_result((SubmitOutcome(action_id=ActionId("a"), accepted=False,
                                             created=False, reason="no agent can run it"),
                               None))


async def test_submits_opened_together_count_against_the_bound_together() -> None:
    scheduler = Unanswered()
    gateway = Gateway(lambda name: scheduler, max_streams=2)
    request = gpb.SubmitRequest(action=pb.Action(command=["true"]))

    async def submit() -> None:
        async for _ in gateway.submit(request):
            pass

    streams = [asyncio.create_task(submit()) for _ in range(20)]
    await asyncio.sleep(0)  # one turn: every stream has run up to its first await
    refused = [s for s in streams if s.done() and isinstance(s.exception(), Busy)]
    assert (len(refused), len(scheduler.sent), gateway.open_streams) == (18, 2, 2)
    scheduler.refuse_all()
    ended = await asyncio.gather(*streams, return_exceptions=True)
    assert sum(isinstance(e, Unplaceable) for e in ended) == 2
    assert gateway.open_streams == 0, "a stream that ends gives its place back"
