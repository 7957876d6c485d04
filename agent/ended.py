"""Attempts that ended here lately: remembered so that a repeated start runs nothing twice
and a restarted scheduler learns how they ended."""

from __future__ import annotations

from mesh.protocol import AttemptReport, CancelOutcome
from mesh.schema import ActionId

Key = tuple[ActionId, int]

# Ended attempts remembered (at 500 endings a second, 20 s of them).
REMEMBER_FINISHED = 10_000
# The `assigned_at` of an attempt remembered only because its stop came before its
# start: not known here, and the mark that it never ran.
NEVER_ASSIGNED = float("-inf")


class Ended:
    """Recently ended attempts, each with its end report until the scheduler says it wrote
    it: a restarted scheduler asks for those, since a report sent while it was away, or
    taken while it could not write, may be missing from its state."""

    def __init__(self, remember: int = REMEMBER_FINISHED) -> None:
        self._ended: dict[Key, tuple[AttemptReport | None, float]] = {}
        self._remember = remember
        # The latest `assigned_at` of the attempts forgotten: a start made no later may be
        # of one that ran here already, and is refused rather than run twice.
        self.forgot_through = float("-inf")

    def __contains__(self, key: Key) -> bool:
        return key in self._ended

    def remember(self, key: Key, report: AttemptReport | None, assigned_at: float) -> None:
        self._ended[key] = (report, assigned_at)
        while len(self._ended) > self._remember:
            _, forgotten = self._ended.pop(next(iter(self._ended)))
            self.forgot_through = max(self.forgot_through, forgotten)

    def stopped_unknown(self, key: Key) -> CancelOutcome:
        """The answer to a stop of an attempt that does not run here. One never seen is
        remembered as ended, so that its start, should it still come (from a scheduler
        that has since died or moved on), is refused."""
        known = self._ended.get(key)
        if known is None:
            self.remember(key, None, NEVER_ASSIGNED)
            return "unknown"
        return "unknown" if known[1] == NEVER_ASSIGNED else "finished"

    def recorded(self, report: AttemptReport) -> None:
        """The scheduler has written this report: a restarted one will not need it."""
        key = (report.action_id, report.attempt)
        known = self._ended.get(key)
        if known is not None and known[0] is not None and known[0].stage == report.stage:
            self._ended[key] = (None, known[1])

    def unrecorded(self) -> list[AttemptReport]:
        """The end reports the scheduler has not said it wrote, oldest first."""
        return [report for report, _ in self._ended.values() if report is not None]
