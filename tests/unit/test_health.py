"""The mesh's health verdict from what its parts say: one row per rule, each alone."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.health import EXIT_CODES, judge
from mesh.schema import AgentState, AgentStatus, Health
from tests.builders import agent

SERVING = Health(serving=True, link="stream")


def status(state: AgentState = "alive", link: str = "stream", name: str = "n1") -> AgentStatus:
    return AgentStatus(info=agent(name), state=state, capacity_percent=100.0, load=None,
                       reserved_cpus=0.0, reserved_memory=0, running=[], link=link)


ROWS: dict[str, tuple[dict[str, Any], str, str]] = {
    "all well": ({}, "healthy", ""),
    "scheduler silent": ({"scheduler": None}, "down", "the scheduler does not answer"),
    "scheduler starting": ({"scheduler": Health(serving=False)}, "down", "starting"),
    "store read-only": ({"scheduler": SERVING.model_copy(update={
        "store": "read-only", "reason": "disk full"})}, "degraded", "disk full"),
    "relay silent": ({"relay": False}, "degraded", "relay does not answer"),
    "no agent": ({"agents": []}, "degraded", "no agent is alive"),
    "every agent drained": ({"agents": [status("drained"), status("draining", name="n2")]},
                            "degraded", "no agent takes new work: 2 drained"),
    "one of two drained": ({"agents": [status(), status("drained", name="n2")]}, "healthy",
                           ""),
    "an agent suspect": ({"agents": [status(), status("suspect", name="n2")]}, "degraded",
                         "1 agent(s) suspect"),
    "stream server down": ({"scheduler": SERVING.model_copy(update={"link": "down"})},
                           "degraded", "stream server is not serving"),
    "an agent off its stream": ({"agents": [status(), status(link="ray", name="n2")]},
                                "degraded", "1 agent(s) report by Ray calls"),
    "ray calls as configured": ({"scheduler": SERVING.model_copy(update={"link": "ray"}),
                                 "agents": [status(link="ray")]}, "healthy", ""),
    "draining is no problem": ({"agents": [status(), status("draining", name="n2")]},
                               "healthy", ""),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_the_verdict(name: str) -> None:
    changes, verdict, problem = ROWS[name]
    parts: dict[str, Any] = {"scheduler": SERVING, "relay": True, "agents": [status()],
                             **changes}
    found = judge(parts["scheduler"], parts["relay"], parts["agents"])
    assert found.verdict == verdict, found.problems
    if problem:
        assert any(problem in p for p in found.problems), found.problems
    else:
        assert found.problems == []


def test_exit_codes_rank_the_verdicts() -> None:
    assert [EXIT_CODES[v] for v in ("healthy", "degraded", "down")] == [0, 1, 2]


def test_why_the_scheduler_was_not_reached_is_kept() -> None:
    found = judge(None, False, [], "no Ray cluster at 'auto'")
    assert found.verdict == "down" and found.problems == ["no Ray cluster at 'auto'"]
    assert found.store == "unknown"
