"""The reaper: one supervisor process per agent that kills the agent's actions when it dies.

Run as `python -m agent.reaper TOKEN [--parent PID] [--var NAME] [--cgroup DIR ...]`, started
by the agent in a session of its own (so Ray's cleanup of the worker's process group does not
kill it first) with a pipe on stdin. Protocol, one line each: `+PGID` registers a process
group, `-PGID` unregisters it. On stdin EOF -- the kernel closes the agent's end of the pipe
when the agent dies, even by SIGKILL -- or on SIGTERM / SIGHUP, the reaper SIGKILLs every
process in the agent's control groups (`--cgroup`: where the machine has them, these hold
every attempt, including processes that left their session and cleared their environment),
every registered process group still led by a marked process (a group number outlives
its processes and may be handed on), then every process whose environment holds
`NAME=TOKEN` (which catches processes between fork and registration and processes that
left their group), and exits.

Stdlib only, so it is serving ~30 ms after its spawn (importing `mesh` would add ~200 ms
for pydantic); the agent's side of the pipe is `ReaperHandle`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from agent import cgroups, procscan

if TYPE_CHECKING:
    import asyncio

# Equal to mesh.names.ENV_AGENT (a test holds them together): importing `mesh` here would
# load pydantic, ~200 ms. The agent passes `--var` anyway.
DEFAULT_VAR = "ACTIONMESH_AGENT"
# Longest a registration change waits before it is written to the reaper.
FLUSH_LINGER = 0.05

_PR_SET_PDEATHSIG = 1
_SIGNALS = {signal.SIGTERM, signal.SIGHUP}
_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _set_parent_death_signal() -> None:
    # Belt and braces besides stdin EOF: fires even if some other process inherited the
    # agent's end of our pipe. Linux-only; elsewhere stdin EOF alone has to do.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def reap(groups: set[int], var: str, token: str, trees: list[str] | None = None) -> int:
    """SIGKILL every process in the control groups `trees`, every registered process group
    whose leader is marked `var=token`, then every process so marked; return kills."""
    kills = sum(cgroups.kill_tree(Path(tree)) for tree in trees or [])
    for pgid in sorted(groups):
        # Only a group still led by a process of ours: one whose leader has gone may have
        # passed its number on (pids wrap, at 32768 in many containers) while its
        # unregistration was still on the way. What is left of such a group is found by
        # its marks below, or by its control group above.
        if not procscan.is_marked(pgid, {var: token}):
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
            kills += 1
        except OSError:
            pass
    kills += procscan.kill_marked({var: token})
    for tree in trees or []:
        # Empty groups left behind would pile up in the kernel, one set per agent lifetime.
        cgroups.remove(Path(tree), wait=2.0)
    return kills


def apply(line: bytes, groups: set[int]) -> None:
    """Apply one protocol line (`+PGID` or `-PGID`); malformed lines are ignored."""
    line = line.strip()
    if len(line) < 2 or line[:1] not in (b"+", b"-") or not line[1:].isdigit():
        return
    pgid = int(line[1:])
    if pgid <= 1:
        return  # killpg(0) is our own group and killpg(1) nearly everything
    if line[:1] == b"+":
        groups.add(pgid)
    else:
        groups.discard(pgid)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Signals only wake `serve` through the wakeup pipe; the handler itself does nothing."""


def arm_signals() -> int:
    """Route SIGTERM and SIGHUP to a wakeup pipe and return its read end.

    Done before anything else: a signal that killed the reaper outright would leave the
    agent's actions unguarded. An exception raised from a handler could land inside the
    clean-up, so the handler does nothing and `serve` watches the pipe.
    """
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for signum in _SIGNALS:
        signal.signal(signum, _ignore)
    # `ReaperHandle.spawn` starts us with these blocked, so one sent while Python was still
    # starting up has waited, pending, and is delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    return wake_r


def serve(stdin_fd: int, wake_fd: int, groups: set[int]) -> str:
    """Apply registrations until stdin EOF or a signal; return which one ended it."""
    # poll, not epoll: epoll refuses a stdin that is a plain file or /dev/null.
    selector = selectors.PollSelector()
    selector.register(stdin_fd, selectors.EVENT_READ)
    selector.register(wake_fd, selectors.EVENT_READ)
    pending = b""
    while True:
        for key, _ in selector.select():
            if key.fd == wake_fd:
                return "signal"
            data = os.read(stdin_fd, 65536)
            if not data:
                return "eof"
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                apply(line, groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.reaper")
    parser.add_argument("token", help="the agent's token, the value its actions are marked with")
    parser.add_argument("--parent", type=int, default=None, help="pid of the agent")
    parser.add_argument("--var", default=DEFAULT_VAR, help="the marker variable's name")
    parser.add_argument("--cgroup", action="append", default=[],
                        help="a control group directory holding the agent's attempts")
    args = parser.parse_args(argv)

    wake_fd = arm_signals()
    _set_parent_death_signal()
    groups: set[int] = set()
    # The parent may have died before prctl took effect; then no signal will ever come.
    why = "the agent was gone at start-up"
    if args.parent is None or os.getppid() == args.parent:
        why = {"eof": "the agent closed its pipe", "signal": "signalled"}[
            serve(sys.stdin.fileno(), wake_fd, groups)]
    kills = reap(groups, args.var, args.token, args.cgroup)
    # One line to the agent's stderr (the Ray worker log): a trace of every clean-up. The
    # reader may be gone with the agent; the work is done by then either way.
    with contextlib.suppress(OSError):
        print(f"actionmesh reaper {os.getpid()}: {why}; {len(groups)} groups registered, "
              f"{kills} kills sent", file=sys.stderr, flush=True)
    return 0


class ReaperHandle:
    """The agent's end of a reaper: spawn it, register and unregister groups, close it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._pending: dict[int, str] = {}
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def spawn(cls, token: str, var: str = DEFAULT_VAR, trees: list[Path] | None = None,
              ) -> ReaperHandle:
        env = dict(os.environ)
        env.pop(var, None)  # the reaper must not carry the mark its own sweep looks for
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_ROOT, env.get("PYTHONPATH", "")) if p
        )
        argv = [sys.executable, "-m", "agent.reaper", token, "--parent", str(os.getpid())]
        # The child inherits this thread's signal mask through exec: with TERM and HUP
        # blocked, one that arrives before the reaper has its handlers waits instead of
        # killing it with the actions unguarded.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            process = subprocess.Popen(
                [*argv, "--var", var, *(f"--cgroup={tree}" for tree in trees or [])],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                cwd="/",
                env=env,
                # Its own session, so Ray killing the worker's process group spares it; it
                # then sees stdin EOF and cleans up.
                start_new_session=True,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return cls(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def register(self, pgid: int) -> bool:
        return self._queue(pgid, "+")

    def unregister(self, pgid: int) -> bool:
        return self._queue(pgid, "-")

    def _queue(self, pgid: int, op: str) -> bool:
        """Note a change for the reaper; on an event loop, changes go out together at most
        every FLUSH_LINGER seconds, and a group registered and unregistered in between is
        never sent. Each line wakes the reaper, and at hundreds of short attempts a second
        those wake-ups cost a fifth of the throughput on two cores. In the gap the reaper's
        sweep by environment token still finds the attempt's processes."""
        if not self.alive():
            return False
        if op == "-" and self._pending.get(pgid) == "+":
            del self._pending[pgid]
            return True
        self._pending[pgid] = op
        import asyncio  # here, not at the top: the reaper process itself never needs it

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self.flush()
        if self._timer is None:
            self._timer = loop.call_later(FLUSH_LINGER, self.flush)
        return True

    def flush(self) -> bool:
        """Send every noted change now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines = "".join(f"{op}{pgid}\n" for pgid, op in self._pending.items())
        self._pending.clear()
        return self._send(lines) if lines else self.alive()

    def _send(self, lines: str) -> bool:
        stdin = self.process.stdin
        if stdin is None or stdin.closed:
            return False
        try:
            stdin.write(lines.encode())
            stdin.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    def close(self, timeout: float = 5.0) -> int | None:
        """Close stdin, which makes the reaper kill what is registered and exit; its exit code,
        or None if it has not exited within `timeout` seconds."""
        self.flush()
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


if __name__ == "__main__":
    sys.exit(main())
