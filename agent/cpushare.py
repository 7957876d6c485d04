"""How much of the machine's CPU this agent's own attempts used (getrusage and /proc, stdlib only).

The model. At any instant every CPU-second an attempt has used sits in exactly one place:

- in the agent process's `getrusage(RUSAGE_CHILDREN)`, once the agent has reaped the
  attempt's main process (its direct child): the kernel then adds that process's own time
  and the time of every descendant it had reaped;
- or, for an attempt started by one of the agent's helpers (the spawn server, which is its
  parent and reaps it), in that helper's `cutime + cstime` in `/proc/PID/stat`; when the
  agent reaps the helper itself, the kernel moves those into the agent's RUSAGE_CHILDREN
  (with the helper's own small time);
- otherwise in `/proc/PID/stat` of a process still in the attempt's process group or
  session: `utime + stime` (its own, all threads, also while a zombie) plus
  `cutime + cstime` (the children it has reaped).

So "CPU seconds of the attempts" = RUSAGE_CHILDREN + the sum over those processes + the
helpers' reaped time, and its change between two samples is what the attempts used in
between. Known errors, all small or rare in CI work:

- a descendant that leaves both the group and the session (setsid, as daemons do) is not
  seen while it runs, and what it used is lost when it ends;
- an orphan reparented away from the attempt (to init or a subreaper) is seen while it runs
  but its time is lost when it ends: the sum drops, which is clamped to no use at all for
  that interval, so it can hide real use of the same interval;
- a process reaped inside an attempt's tree between reading its parent and itself is
  missed (or counted twice) for one sample and set right in the next; so is an attempt a
  helper reaps between the scan and the read of the helper (counted twice);
- a process runs uncounted between its spawn and the executor learning its group; its time
  shows up in the next interval;
- every other child the agent process reaps (a replaced reaper) counts as ours.

The agent reaps its children on its event loop, and the sampler runs there too, so the
agent never reaps between the getrusage call and the scan of one sample.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Collection

# /proc reports times in clock ticks.
TICKS = os.sysconf("SC_CLK_TCK")


def reaped_seconds() -> float:
    """CPU seconds of every child this process has reaped, and of what they had reaped."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stat_times(data: bytes, wanted: frozenset[int] | None) -> int | None:
    """utime+stime+cutime+cstime in ticks from a /proc/PID/stat line, or None when the
    process is in none of the `wanted` sessions or process groups; with `wanted` None,
    only cutime+cstime, the time of the children it reaped, whatever its groups."""
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    # After it: state ppid pgrp session tty_nr | tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime ...
    head = data[data.rfind(b")") + 2:].split(b" ", 5)
    try:
        fields = head[5].split(b" ", 10)
        reaped = int(fields[8]) + int(fields[9])
        if wanted is None:
            return reaped
        if int(head[2]) not in wanted and int(head[3]) not in wanted:
            return None
        return int(fields[6]) + int(fields[7]) + reaped
    except (ValueError, IndexError):
        return None  # not the layout we know: count nothing rather than garbage


def _read_stat(proc: str, pid: int | str) -> bytes | None:
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY)
        try:
            return os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None  # it ended


def reaped_by(pids: Collection[int], proc: str = "/proc") -> float:
    """CPU seconds of the children the processes `pids` have reaped, and of what those
    had reaped."""
    ticks = 0
    for pid in pids:
        data = _read_stat(proc, pid)
        ticks += (_stat_times(data, None) or 0) if data is not None else 0
    return ticks / TICKS


class GroupScan:
    """CPU seconds of the processes in the attempts' sessions and process groups, by /proc.

    Reading every process's stat costs ~20-80 us each on our machines, too much to do for a
    whole busy machine every half second. A process outside an attempt's session can never
    join it (setpgid stays within a session, and setsid makes a new one), so a pid found
    foreign stays foreign until the kernel hands the pid to a new process. Pids are handed
    out in increasing order, wrapping at pid_max, and ns_last_pid says how far the kernel
    has got: a pid outside the range handed out since the previous scan is still the same
    process, and its stat need not be read again. (This misses a reuse only if more than
    pid_max processes were started within one scan interval.)
    """

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self._foreign: set[int] = set()
        self._last_pid: int | None = None

    def seconds(self, groups: Collection[int]) -> float:
        """CPU seconds of every process (zombies too) whose session or process group is one
        of `groups`, with the time of the children each has reaped."""
        if not groups:
            # Between scans the pid counter may wrap: start again from nothing.
            self._foreign.clear()
            self._last_pid = None
            return 0.0
        wanted = frozenset(groups)
        try:
            names = os.listdir(self.proc)
        except OSError:
            return 0.0
        # Read after the listing: every process listed was started before this value.
        last = self._read_last_pid()
        prev, self._last_pid = self._last_pid, last
        foreign: set[int] = set()
        ticks = 0
        for name in names:
            if not name.isdigit():
                continue
            pid = int(name)
            if pid in self._foreign and not _handed_out(pid, prev, last):
                foreign.add(pid)
                continue
            data = _read_stat(self.proc, name)
            if data is None:
                continue  # it ended since the listing
            times = _stat_times(data, wanted)
            if times is None:
                foreign.add(pid)
            else:
                ticks += times
        self._foreign = foreign
        return ticks / TICKS

    def _read_last_pid(self) -> int | None:
        try:
            with open(f"{self.proc}/sys/kernel/ns_last_pid", "rb") as file:
                return int(file.read())
        except (OSError, ValueError):
            return None  # then every pid counts as new and each scan reads them all


def _handed_out(pid: int, prev: int | None, last: int | None) -> bool:
    """Whether `pid` may have been given to a new process since `prev` was read (`last` is
    the latest pid now); with either unknown, any pid may have been."""
    if prev is None or last is None:
        return True
    if last >= prev:
        return prev < pid <= last
    return pid > prev or pid <= last  # the counter wrapped at pid_max


class AttemptCpu:
    """The share of the machine's CPU the attempts used between consecutive `percent` calls.

    `groups` returns the process groups of the attempts running now (pgid == session id ==
    the main process's pid, as the executor starts them); `parents` the pids of the
    agent's helpers that start and reap attempts. The /proc scan runs only while an attempt
    runs; with none, the reaped times alone still count the attempts that ended in between.
    """

    def __init__(self, groups: Callable[[], Collection[int]], cpu_count: int,
                 clock: Callable[[], float] = time.monotonic, proc: str = "/proc",
                 parents: Callable[[], Collection[int]] = tuple) -> None:
        self.groups = groups
        self.parents = parents
        self.cpu_count = max(1, cpu_count)
        self.clock = clock
        self.scan = GroupScan(proc)
        self._seconds = self.seconds()
        self._at = clock()

    def seconds(self) -> float:
        """CPU seconds the attempts have used so far (see the module docstring)."""
        scanned = reaped_seconds() + self.scan.seconds(self.groups())
        return scanned + reaped_by(self.parents(), self.scan.proc)

    def percent(self) -> float:
        """Attempts' CPU since the previous call as a percentage of the whole machine,
        0..100: 100 means they kept every logical CPU busy."""
        seconds, at = self.seconds(), self.clock()
        used = max(0.0, seconds - self._seconds)  # negative: orphans' time lost (see above)
        wall = at - self._at
        self._seconds, self._at = seconds, at
        if wall <= 0:
            return 0.0
        return min(100.0, used / (wall * self.cpu_count) * 100.0)
