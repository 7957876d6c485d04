"""The actionmesh.v1 contract: the checked-in Python is what the protos give, and every
model crosses the wire unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh import protoconv
from mesh.errors import InvalidInput
from mesh.protocol import Assignment, AttemptReport, ReportAnswer
from mesh.schema import Action, ActionId, AgentId, RetryPolicy
from mesh.v1 import CONNECT
from mesh.v1 import link_pb2 as pb
from tests.builders import load, report

ROOT = Path(__file__).resolve().parents[2]


def test_the_generated_python_is_current(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / ".ci" / "protos"), str(tmp_path)], check=True,
                   env={**os.environ, "PY": sys.executable})
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2.py*"))
    assert generated, "protoc wrote nothing"
    for path in generated:
        assert (tmp_path / path).read_text() == (ROOT / path).read_text(), (
            f"{path} is stale: run .ci/protos")


def test_the_method_path_comes_from_the_descriptor() -> None:
    assert CONNECT == "/actionmesh.v1.AgentLink/Connect"


FULL = Action(id=ActionId("build-1"), command=["make", "-j", "8"], shell=False,
              env={"CC": "clang"}, secrets={"TOKEN": "s3cret"}, cwd="/src", cpus=2.5,
              memory=3 * 2**30, labels=["os:linux"], provisionable_labels=["gpu"],
              account="ci", job="nightly", timeout=600.0,
              retry=RetryPolicy(on_failure=1, on_lost=5, quarantine_after=2),
              tags={"pr": "42"})


@pytest.mark.parametrize("action", [FULL, Action(command=["true"])], ids=["full", "bare"])
def test_an_assignment_crosses_unchanged(action: Action) -> None:
    sent = Assignment(action=action, action_id=ActionId("x"), attempt=3,
                      agent_id=AgentId("n1"), assigned_at=12.5)
    wire = pb.Assignment.FromString(protoconv.assignment_pb(sent).SerializeToString())
    assert protoconv.assignment(wire, AgentId("n1")) == sent
    answer = protoconv.answer_pb(ReportAnswer(assignments=[sent], recorded=True))
    assert answer.recorded and [protoconv.assignment(a, AgentId("n1"))
                                for a in answer.assignments] == [sent]


@pytest.mark.parametrize("sent", [
    report("a", 1, "n1", "running", time=5.0),
    report("a", 2, "n1", "failed", time=6.0, exit_code=-9, reason="killed"),
    report("a", 3, "n1", "succeeded", exit_code=0),
    report("a", 1, "n1", "refused", reason="no reaper"),
])
def test_a_report_crosses_unchanged(sent: AttemptReport) -> None:
    wire = pb.AttemptReport.FromString(protoconv.report_pb(sent).SerializeToString())
    assert protoconv.report(wire, AgentId("n1")) == sent


def test_load_crosses_unchanged_and_a_bad_one_is_refused_naming_the_field() -> None:
    sent = load(cpu_percent=40.0, mesh=10.0, at=7.0).model_copy(
        update={"load_avg": (0.5, 1.0, 1.5)})
    assert protoconv.load(protoconv.load_pb(sent)) == sent
    with pytest.raises(InvalidInput, match="cpu_percent"):
        protoconv.load(pb.Load(cpu_percent=180.0, cpu_count=1))


def test_stop_outcomes_cross_and_an_unknown_one_is_refused() -> None:
    for outcome in ("stopped", "finished", "unknown"):
        assert protoconv.outcome(protoconv.outcome_pb(outcome)) == outcome
    with pytest.raises(ValueError, match="stop outcome 0"):
        protoconv.outcome(pb.STOP_OUTCOME_UNSPECIFIED)
