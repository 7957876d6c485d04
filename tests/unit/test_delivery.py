"""What the shell makes of an agent's answer to a stop."""

from __future__ import annotations

from typing import Any, cast

import pytest

from mesh.protocol import CancelOutcome
from mesh.schema import ActionId, AgentId
from scheduler.core.decisions import Stop
from scheduler.core.state import SchedulerState
from scheduler.delivery import Delivery
from scheduler.durable import Writer
from scheduler.link import LinkServer


class Core:
    """The two verbs an answer may lead to, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ActionId, int]] = []

    def stop_found_nothing(self, action_id: ActionId, attempt: int, now: float) -> None:
        self.calls.append(("found nothing", action_id, attempt))

    def take_back_unanswered(self, action_id: ActionId, attempt: int) -> None:
        self.calls.append(("ask again", action_id, attempt))


class Written:
    def __init__(self) -> None:
        self.writes = 0

    def write(self) -> bool:
        self.writes += 1
        return True


def delivery(core: Core, writer: Written) -> Delivery:
    def unused(*_: Any) -> None:
        raise AssertionError("not expected here")

    return Delivery(cast(SchedulerState, core), cast(Writer, writer),
                    cast(LinkServer, None), {}, lambda: 5.0, unused, unused, unused)


@pytest.mark.parametrize(("held_only", "outcome", "expected"), [
    (False, "unknown", [("found nothing", "a", 2)]),
    (False, "stopped", []),
    (True, "unknown", [("ask again", "a", 2)]),  # not held there (yet): asked again
    (True, "stopped", []),  # dropped unstarted: its withdrawn report tells the rest
])
def test_an_answer_to_a_stop_leads_where_its_kind_says(
        held_only: bool, outcome: CancelOutcome, expected: list[tuple[str, str, int]]) -> None:
    core, writer = Core(), Written()
    stop = Stop(ActionId("a"), 2, AgentId("n1"), "why", held_only=held_only)
    delivery(core, writer).stopped(stop, outcome)
    assert core.calls == expected
    assert writer.writes == (1 if expected and not held_only else 0)
