"""Which load samples an agent sends: each material change at once, else a heartbeat.

An idle fleet must cost the scheduler next to nothing; a sample every half second from every
agent was about 0.3 % of a core per agent there. What the scheduler decides on is room for
memory, and whether the CPU that is not the mesh's own is past its limit: a change of
either is told at once. A machine's CPU use jitters by several points from one sample to
the next (5-point steps sent 0.7 samples a second from each idle agent of a local
cluster); only a swing of half the machine is told besides, for the people watching `mesh
agents`. A heartbeat keeps the last sample from going stale.
"""

from __future__ import annotations

from mesh.schema import Load

# Percentage points of the machine's CPU, whole or the mesh's own.
CPU_STEP = 50.0
# A share of the machine's memory.
MEMORY_STEP = 0.01


class LoadFilter:
    def __init__(self, heartbeat: float, cpu_busy_percent: float) -> None:
        self.heartbeat = heartbeat
        self.cpu_busy_percent = cpu_busy_percent
        self.sent: Load | None = None

    def due(self, load: Load) -> bool:
        """Whether to send `load` (stamped with its own time); if so, it counts as sent."""
        if self.sent is None or self._changed(self.sent, load) or (
                load.sampled_at - self.sent.sampled_at >= self.heartbeat):
            self.sent = load
            return True
        return False

    def _changed(self, before: Load, now: Load) -> bool:
        busy = self.cpu_busy_percent
        return (abs(now.cpu_percent - before.cpu_percent) >= CPU_STEP
                or abs(now.mesh_cpu_percent - before.mesh_cpu_percent) >= CPU_STEP
                # Across the limit the live-load check judges by, however small the step.
                or (now.foreign_cpu_percent >= busy) != (before.foreign_cpu_percent >= busy)
                or abs(now.memory_available - before.memory_available)
                >= MEMORY_STEP * now.memory_total
                or now.cpu_count != before.cpu_count
                or now.memory_total != before.memory_total)
