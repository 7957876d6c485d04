"""Where an executor's reports and log batches go: the two sink protocols (no Ray here)."""

from __future__ import annotations

from typing import Protocol

from mesh.protocol import AttemptReport
from mesh.schema import ActionId, LogBatch


class ReportSink(Protocol):
    def report(self, report: AttemptReport) -> None:
        """Hand one stage report on; fire-and-forget, called in the order they happened."""


class LogSink(Protocol):
    async def push(self, batch: LogBatch) -> None:
        """Deliver one batch; several may be in flight at once, offsets say where each goes."""

    async def close(self, action_id: ActionId, attempt: int, total_lines: int) -> None:
        """The attempt has ended: its lines are offsets 0 .. total_lines-1, all pushed."""
