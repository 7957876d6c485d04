"""Exit statuses as reports."""

from __future__ import annotations

import pytest

from agent.outcome import Outcome, outcome
from mesh import reasons
from mesh.protocol import ReportStage


@pytest.mark.parametrize(
    ("returncode", "stopped", "expected"),
    [
        (0, None, Outcome("succeeded", 0, "")),
        (1, None, Outcome("failed", 1, "exited with code 1")),
        (255, None, Outcome("failed", 255, "exited with code 255")),
        (-9, None, Outcome("failed", 137, "killed by SIGKILL (exit code 137)")),
        (-15, ("cancelled", "cancelled"),
         Outcome("cancelled", 143, "cancelled; killed by SIGTERM (exit code 143)")),
        (0, ("cancelled", "cancelled"),
         Outcome("cancelled", 0, "cancelled; exited with code 0")),
        (-9, ("timed_out", "timed out after 2s"),
         Outcome("timed_out", 137, "timed out after 2s; killed by SIGKILL (exit code 137)")),
        (-99, None, Outcome("failed", 227, "killed by signal 99 (exit code 227)")),
    ],
    ids=["zero", "one", "255", "sigkill", "cancel-term", "cancel-clean-exit", "timeout",
         "unknown-signal"],
)
def test_outcome(returncode: int, stopped: tuple[ReportStage, str] | None,
                 expected: Outcome) -> None:
    assert outcome(returncode, stopped) == expected


def test_an_exit_status_never_learned_fails_without_a_code_or_keeps_the_stop() -> None:
    assert outcome(None) == Outcome("failed", None, reasons.STATUS_LOST)
    assert outcome(None, ("cancelled", "cancelled by request")) == Outcome(
        "cancelled", None, f"cancelled by request; {reasons.STATUS_LOST}")
