"""Finding and killing processes by the marker variables in their environment (stdlib only)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping

# The reaper imports this module, so it must stay stdlib-only: importing `mesh` would pull
# in pydantic and add ~200 ms to the reaper's start-up.


def _needles(marks: Mapping[str, str]) -> list[bytes]:
    return [f"{name}={value}".encode() for name, value in marks.items()]


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            return file.read()
    except OSError:
        # Gone, a kernel thread (ESRCH), or not ours to read: none of these can be ours.
        return b""


def find_marked(marks: Mapping[str, str]) -> list[int]:
    """Pids of live processes whose environment holds every `NAME=value` of `marks`.

    /proc/PID/environ is the environment as the process was exec'd with, which is what an
    agent set; a zombie reads as empty and so never matches (it is already dead).
    """
    needles = _needles(marks)
    if not needles:
        raise ValueError("find_marked needs at least one mark, or it would match everything")
    own = os.getpid()
    found: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == own:
            continue
        if _holds(pid, needles):
            found.append(pid)
    return found


def is_marked(pid: int, marks: Mapping[str, str]) -> bool:
    """Whether the live process `pid` holds every `NAME=value` of `marks`."""
    needles = _needles(marks)
    if not needles:
        raise ValueError("is_marked needs at least one mark, or it would match everything")
    return _holds(pid, needles)


def _holds(pid: int, needles: list[bytes]) -> bool:
    data = _environ(pid)
    # A cheap substring test first; the split makes `A=1` not match `A=10`.
    if not data or not all(needle in data for needle in needles):
        return False
    entries = set(data.split(b"\0"))
    return all(needle in entries for needle in needles)


def kill_marked(
    marks: Mapping[str, str],
    settle: float = 0.02,
    quiet_passes: int = 2,
    max_passes: int = 50,
) -> int:
    """SIGKILL marked processes until `quiet_passes` scans in a row find none; return kills sent.

    One scan is not enough: a process that was between fork and exec during the scan shows
    its marks only once it has exec'd, and a live one may fork while we scan.
    """
    signalled = 0
    quiet = 0
    for _ in range(max_passes):
        pids = find_marked(marks)
        if not pids:
            quiet += 1
            if quiet >= quiet_passes:
                break
        else:
            quiet = 0
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    signalled += 1
                except OSError:
                    pass
        time.sleep(settle)
    return signalled
