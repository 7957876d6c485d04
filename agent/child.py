"""An attempt's process on the event loop: spawned, its pipes read into the log shipper, its
exit watched, each with one reader on the loop.

asyncio's subprocess transports cost several loop turns per spawn (a task connects each
pipe, futures hand over each step) and a child watcher; at hundreds of short attempts a
second that was the largest share of a slot's cycle after the spawn itself. Here a spawn is
`Popen` plus three `add_reader` calls. Exit comes from a pidfd where Linux has them (5.3+),
else from asyncio's child watcher; for a process the spawn server started (its parent), from
the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from agent.logship import LineSplitter, LogShipper
from agent.runas import RunAs
from agent.spawner import Spawner
from mesh.schema import Stream

# As much as one read takes from a pipe (asyncio's read transports take 256 KiB too).
READ_SIZE = 256 * 1024
# The exit code of a process reaped by another (its status is lost to the agent).
LOST_STATUS = 255
# A gated start: the shell waits for a line on stdin before it execs the action, so the
# agent can first put it where it must be (its control group, or another user's): all the
# action starts is born there. It runs nothing if the agent goes away before the line
# comes. (Where the spawn server runs, attempts are born in their groups without it.)
GATE = ('IFS= read -r go && [ "$go" = go ] || exit 125; cd -- "$1" || exit 126; '
        'unset OLDPWD; shift; exec "$@" </dev/null')


class ChildProcess:
    """One attempt's main process.

    Exit and end of output are kept apart on purpose: a background child still holding
    stdout must not hide the main process's exit for as long as it lives.
    """

    def __init__(self, shipper: LogShipper) -> None:
        self.loop = asyncio.get_running_loop()
        self.shipper = shipper
        shipper.on_congestion = self._congestion
        self.exited: asyncio.Future[None] = self.loop.create_future()
        self.pipes_closed: asyncio.Future[None] = self.loop.create_future()
        self.bytes_read = 0
        self.pid = 0
        self.returncode: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._pipes: dict[int, tuple[Stream, LineSplitter, IO[bytes]]] = {}
        self._paused = False
        self._pidfd = -1
        self._spawner: Spawner | None = None
        # Its exit status never reached the agent (whoever reaped it kept it).
        self.status_lost = False

    def spawn(self, argv: Sequence[str], cwd: str | None, env: dict[str, str],
              gated: bool = False, user: RunAs | None = None) -> None:
        """Start it in a session of its own (its own process group, pgid == pid); raises
        what `Popen` raises when it cannot start. `gated`: it waits, as a shell, until
        `release` (and its pid is the action's once released). `user`: as that user."""
        who: dict[str, Any] = {}
        if user is not None:
            # Set by Popen's child between fork and exec (it then forks, not vforks).
            who = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        if gated:
            # The gate enters `cwd` as the user it runs as; Popen only enters "/".
            argv = ["/bin/sh", "-c", GATE, "actionmesh-gate", cwd or ".", *argv]
            cwd = "/" if user is not None else cwd
        # No preexec_fn: it is unsafe in a multithreaded Ray worker.
        popen = subprocess.Popen(argv, stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True, cwd=cwd, env=env, **who)
        self._popen, self.pid = popen, popen.pid
        assert popen.stdout is not None and popen.stderr is not None
        try:
            self._read(popen.stdout, popen.stderr)
            self._watch_exit()
        except BaseException:
            # Started but not watched: it must not run on unseen, nor stay a zombie.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            popen.wait()
            self.close_pipes()
            raise

    async def spawn_in(self, spawner: Spawner, groups: Sequence[Path], program: str,
                       argv: Sequence[str], cwd: str, env: dict[str, str]) -> None:
        """Start it through the spawn server, born in `groups` (their cgroup.procs files),
        in a session of its own; `program` is the file to exec. Raises what exec would."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.pid = await spawner.spawn(program, argv, cwd, env, groups, out_w, err_w)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self._spawner = spawner
        try:
            # Owned by _pipes from here, closed by _close_pipe.
            self._read(open(out_r, "rb", buffering=0),  # noqa: SIM115
                       open(err_r, "rb", buffering=0))  # noqa: SIM115
            spawner.watch(self.pid, self._set_exited, self._orphaned)
        except BaseException:
            self.abandon()
            raise

    def _read(self, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        masked = self.shipper.masks
        self._pipes = {stdout.fileno(): ("stdout", LineSplitter(masked=masked), stdout),
                       stderr.fileno(): ("stderr", LineSplitter(masked=masked), stderr)}
        for fd in self._pipes:
            os.set_blocking(fd, False)
            self.loop.add_reader(fd, self._readable, fd)

    def release(self) -> None:
        """Let a gated start exec the action."""
        assert self._popen is not None and self._popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._popen.stdin.write(b"go\n")
            self._popen.stdin.close()

    def abandon(self) -> None:
        """Undo a spawn whose start failed after it: kill, reap, stop reading."""
        if self._spawner is not None:
            if self.returncode is None:
                self._spawner.forget(self.pid)  # the server reaps it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self._set_exited(-signal.SIGKILL)
            self.close_pipes()
            return
        popen = self._popen
        if popen is None or self.returncode is not None:
            return
        if self._pidfd >= 0:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._set_exited(popen.wait())
        self.close_pipes()
        if popen.stdin is not None:
            popen.stdin.close()

    # ---- output --------------------------------------------------------------------------

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # a read error ends this pipe as EOF would
        stream, splitter, _ = self._pipes[fd]
        if data:
            self.bytes_read += len(data)
            self.shipper.add(stream, splitter.feed(data))
        else:
            self._close_pipe(fd)

    def _close_pipe(self, fd: int) -> None:
        stream, splitter, pipe = self._pipes.pop(fd)
        self.loop.remove_reader(fd)
        pipe.close()
        self.shipper.add(stream, splitter.finish())
        if not self._pipes and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def close_pipes(self) -> None:
        """Stop reading whatever is still open (a process we could not kill holds it)."""
        for fd in list(self._pipes):
            self._close_pipe(fd)

    def _congestion(self, congested: bool) -> None:
        if congested == self._paused:
            return
        self._paused = congested
        for fd in self._pipes:
            if congested:
                self.loop.remove_reader(fd)
            else:
                self.loop.add_reader(fd, self._readable, fd)

    # ---- exit ----------------------------------------------------------------------------

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            watcher = asyncio.get_child_watcher()
            watcher.attach_loop(self.loop)
            watcher.add_child_handler(self.pid, self._exited_elsewhere)
            return
        self.loop.add_reader(self._pidfd, self._pidfd_readable)

    def _orphaned(self) -> None:
        """Its spawn server died: its end is watched here now (its status is lost)."""
        if self.returncode is not None:
            return
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._lost()
            return
        except OSError:
            # Nothing to watch it with: it must not run on unseen.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self._lost()
            return
        self.loop.add_reader(self._pidfd, self._pidfd_readable)

    def _pidfd_readable(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.status_lost = True  # reaped elsewhere
            pid, status = self.pid, LOST_STATUS << 8
        if pid == 0:
            return  # not yet waitable; the pidfd stays watched
        self.loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self._set_exited(os.waitstatus_to_exitcode(status))

    def _lost(self) -> None:
        self.status_lost = True
        self._set_exited(LOST_STATUS)

    def _exited_elsewhere(self, pid: int, returncode: int) -> None:
        # The child watcher may call from its own thread.
        self.loop.call_soon_threadsafe(self._set_exited, returncode)

    def _set_exited(self, returncode: int) -> None:
        self.returncode = returncode
        if self._popen is not None:
            self._popen.returncode = returncode  # reaped here: Popen must not wait for it
        if not self.exited.done():
            self.exited.set_result(None)

    def close(self) -> None:
        """Stop reading its output; kill it if it still runs (its exit is still watched, so
        it is reaped, not left a zombie). Called once it has exited, or when the agent
        gives up on it."""
        self.close_pipes()
        if self.returncode is None and self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
