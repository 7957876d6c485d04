"""Job-to-group dispatch: proportional to capacity, blocked groups get nothing, manual and
colocation rules hold, the same answer for the same history; and the history's window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.dispatch import BUCKET, Dispatch, JobHistory, Manual, dispatch

DAY = BUCKET


def group_loads(result: Dispatch, loads: dict[str, float]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for job, group in result.assignments.items():
        totals[group] = totals.get(group, 0.0) + loads.get(job, 0.0)
    return totals


def test_load_goes_in_proportion_to_capacity() -> None:
    loads = {f"j{i}": 10.0 for i in range(40)}  # 400 CPU-seconds in equal jobs
    result = dispatch(loads, {"big": 300.0, "small": 100.0})
    assert group_loads(result, loads) == {"big": 300.0, "small": 100.0}
    assert result.loads == {"big": 300.0, "small": 100.0}


def test_a_blocked_group_gets_nothing_and_its_jobs_move() -> None:
    loads = {"a": 50.0, "b": 30.0, "c": 20.0}
    before = dispatch(loads, {"x": 1.0, "y": 1.0})
    assert set(before.assignments.values()) == {"x", "y"}
    after = dispatch(loads, {"x": 1.0, "y": 1.0}, blocked=["x"])
    assert set(after.assignments.values()) == {"y"}
    assert after.loads["x"] == 0.0


def test_manual_assignments_hold_unless_their_group_is_blocked_and_they_are_not_pinned(
        ) -> None:
    loads = {"warm": 5.0, "pinned": 5.0, "other": 90.0, "never-ran": 0.0}
    manual = {"warm": Manual("small"), "pinned": Manual("gone", pin=True),
              "new": Manual("small")}
    result = dispatch({k: v for k, v in loads.items() if v}, {"small": 1.0, "big": 9.0},
                      manual=manual, blocked=["gone"])
    assert result.assignments["warm"] == "small"
    assert result.assignments["pinned"] == "gone", "a pin is a requirement"
    assert result.assignments["new"] == "small", "assigned by hand before any history"
    assert "never-ran" not in result.assignments, "no history, no hand: nothing to say"
    moved = dispatch({"warm": 5.0}, {"small": 1.0, "big": 9.0}, manual=manual,
                     blocked=["small"])
    assert moved.assignments["warm"] == "big"


def test_colocated_jobs_move_together_with_their_summed_load() -> None:
    loads = {"build": 60.0, "test": 50.0, "lint": 10.0, "docs": 10.0}
    result = dispatch(loads, {"x": 1.0, "y": 1.0}, colocate=[["build", "test"]])
    assert result.assignments["build"] == result.assignments["test"]
    assert result.loads[result.assignments["build"]] == 110.0
    pinned = dispatch(loads, {"x": 1.0, "y": 1.0}, colocate=[["build", "test"]],
                      manual={"test": Manual("y", pin=True)})
    assert pinned.assignments["build"] == pinned.assignments["test"] == "y"


def test_with_no_open_group_nothing_is_assigned_but_pins() -> None:
    result = dispatch({"a": 1.0, "b": 2.0}, {"x": 1.0}, manual={"b": Manual("x", pin=True)},
                      blocked=["x"])
    assert result.assignments == {"b": "x"}


jobs_loads = st.dictionaries(st.text("abcdefghij", min_size=1, max_size=4),
                             st.floats(0.001, 1e6), min_size=1, max_size=60)
group_weights = st.dictionaries(st.sampled_from([f"g{i}" for i in range(8)]),
                                st.floats(1.0, 1e4), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(loads=jobs_loads, weights=group_weights, data=st.data())
def test_no_open_group_ends_above_its_share_by_more_than_one_jobs_load(
        loads: dict[str, float], weights: dict[str, float], data: st.DataObject) -> None:
    blocked = data.draw(st.sets(st.sampled_from(sorted(weights)), max_size=len(weights) - 1))
    result = dispatch(loads, weights, blocked=blocked)
    assert result == dispatch(dict(reversed(list(loads.items()))), weights,
                              blocked=blocked), "the same answer whatever the order given"
    assert set(result.assignments) == set(loads)
    open_weight = sum(w for g, w in weights.items() if g not in blocked)
    total = sum(loads.values())
    heaviest = max(loads.values())
    for group, load in group_loads(result, loads).items():
        assert group not in blocked
        share = total * weights[group] / open_weight
        assert load <= share + heaviest + 1e-6 * total, (group, load, share, heaviest)


def test_the_window_counts_only_the_days_it_covers_and_old_days_can_go() -> None:
    history = JobHistory()
    now = 100 * DAY
    history.record("old", now - 20 * DAY, 500.0)
    history.record("recent", now - 3 * DAY, 20.0)
    history.record("recent", now - 1, 5.0)
    history.record("recent", now - 13 * DAY - 1, 7.0)  # inside 14 days, to the day
    history.record("nothing", now, 0.0)
    assert history.loads(now, 14 * DAY) == {"recent": 32.0}
    assert history.loads(now, 30 * DAY) == {"old": 500.0, "recent": 32.0}
    history.forget_before(now - 14 * DAY)
    assert history.loads(now, 30 * DAY) == {"recent": 32.0}
    again = JobHistory.restore(history.snapshot())
    assert again.loads(now, 14 * DAY) == history.loads(now, 14 * DAY)


@pytest.mark.parametrize(("job", "seconds"), [("", 5.0), ("j", 0.0), ("j", -1.0)])
def test_nothing_is_recorded_for_no_job_or_no_work(job: str, seconds: float) -> None:
    history = JobHistory()
    history.record(job, 0.0, seconds)
    assert history.snapshot() == {}
