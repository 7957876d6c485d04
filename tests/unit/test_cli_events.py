"""How `mesh events` reads its --since and prints an entry."""

from __future__ import annotations

from datetime import datetime

import pytest

from mesh.cli_events import line_of, parse_since
from mesh.errors import InvalidInput
from mesh.schema import ActionId, AgentId, MeshEvent
from mesh.stages import Stage

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("text", "expected"), [
    ("10m", NOW - 600),
    ("1h30m", NOW - 5400),
    ("90", NOW - 90),
    ("2027-01-15T08:00:00+00:00", 1_800_000_000.0),  # 1.8e9 s after the epoch, in UTC
    ("2027-01-15T09:00:00+01:00", 1_800_000_000.0),
])
def test_since_is_a_duration_ago_or_a_point_in_time(text: str, expected: float) -> None:
    assert parse_since(text, NOW) == pytest.approx(expected)


def test_a_since_that_is_neither_is_refused_naming_the_option() -> None:
    with pytest.raises(InvalidInput, match="--since") as caught:
        parse_since("last tuesday", NOW)
    assert caught.value.errors == [("--since", "last tuesday")]


def test_an_entry_reads_as_seq_time_kind_subject_and_what_happened() -> None:
    at = datetime(2026, 12, 2, 10, 0, 1, 250000).timestamp()
    ended = MeshEvent(seq=42, time=at, kind="stage", action_id=ActionId("a1"), attempt=2,
                      stage=Stage.FAILED, agent_id=AgentId("w1"), exit_code=3,
                      reason="exited with code 3")
    assert line_of(ended) == ("      42  2026-12-02 10:00:01.250  stage              a1#2 @w1  "
                              "failed: exit 3: exited with code 3")
    left = MeshEvent(seq=7, time=at, kind="agent_left", agent_id=AgentId("w1"),
                     reason="its node is dead")
    assert line_of(left).endswith("agent_left         @w1  its node is dead")
    started = MeshEvent(seq=1, time=at, kind="scheduler_started")
    assert line_of(started).endswith("scheduler_started  -")
