"""The stage transition table: every allowed move passes, every other one raises."""

import pytest

from mesh.errors import StageError
from mesh.stages import TERMINAL, TRANSITIONS, Stage, transition

ALL_MOVES = [(a, b) for a in Stage for b in Stage]


@pytest.mark.parametrize(("current", "target"), ALL_MOVES, ids=[f"{a}->{b}" for a, b in ALL_MOVES])
def test_transition_follows_the_table(current: Stage, target: Stage) -> None:
    if target in TRANSITIONS[current]:
        assert transition(current, target) is target
    else:
        with pytest.raises(StageError, match=f"{current.value} cannot move to {target.value}"):
            transition(current, target)


def test_terminal_stages_have_no_way_out() -> None:
    for stage in TERMINAL:
        assert TRANSITIONS[stage] == frozenset()


def test_every_stage_is_reachable_from_queued() -> None:
    seen, frontier = {Stage.QUEUED}, [Stage.QUEUED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(Stage)
