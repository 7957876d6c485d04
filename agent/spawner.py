"""The agent's end of its spawn server (agent/spawnserver.py): the server started and
restarted, attempts spawned through it, and their ends passed on to whoever watches them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import spawnserver
from agent.spawnserver import HEADER, frame

log = logging.getLogger(__name__)

# Longest the server may take to start, or to answer one spawn (it answers in about a
# millisecond; only a stopped or swapped-out machine is slower).
ANSWER_TIMEOUT = 10.0


class SpawnerGone(RuntimeError):
    """The server died, or did not answer in time; a new one starts on the next spawn."""


@dataclass
class _Watch:
    exited: Callable[[int], None]
    orphaned: Callable[[], None]


class Spawner:
    """Spawns attempts through one server process, started on first use and again after it
    dies. Runs on the agent's event loop: a spawn's answer (the pid, once the child has
    exec'd, or the errno) comes through the loop's reader like the ends the server reports,
    so the loop runs on while the server spawns; each end goes to the pid's watcher.

    When the server dies, the attempts it started run on as orphans: their watchers are
    told (`orphaned`), to watch the processes themselves, their exit statuses lost.
    """

    def __init__(self, home: Callable[[], list[Path]]) -> None:
        self.home = home  # the server's own groups' cgroup.procs files, asked at each start
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._watches: dict[int, _Watch] = {}
        self._early: dict[int, int] = {}  # ends reported before their pid was watched
        # Pids this server answered and nobody watches yet: a pid not here when its watch
        # comes was started by a server gone since, which will never report its end.
        self._unwatched: set[int] = set()
        # Pids whose end nobody waits for: theirs must not be taken for a later process's
        # that gets the same pid.
        self._forgotten: set[int] = set()
        # The spawns sent and not yet answered, oldest first: the server answers in order.
        self._asked: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._stdin = os.open(os.devnull, os.O_RDONLY)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the server unless it runs; SpawnerGone if it does not come up."""
        if self._sock is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", spawnserver.__file__, str(theirs.fileno()),
                 *map(str, self.home())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, cwd="/", env={},
                start_new_session=True)
        finally:
            theirs.close()
        self._sock = ours
        self._buffer.clear()
        ready = self._ready()
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable)
        log.info("spawn server %d started", ready["ready"])

    async def spawn(self, path: str, argv: Sequence[str], cwd: str, env: dict[str, str],
                    groups: Sequence[Path], stdout: int, stderr: int) -> int:
        """Start `path` (`argv`) in `cwd`, in its own session, born in `groups` (their
        cgroup.procs files); its pid. Raises what exec would (OSError), or SpawnerGone.
        The descriptors are the server's once this returns or raises: the caller may close
        its own at once."""
        self.start()
        assert self._sock is not None
        data = frame({"path": path, "argv": list(argv), "cwd": cwd, "env": env,
                      "groups": [str(g) for g in groups]})
        try:
            sent = self._sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                          array("i", [self._stdin, stdout, stderr]))], socket.MSG_NOSIGNAL)
            self._sock.sendall(data[sent:], socket.MSG_NOSIGNAL)
        except OSError as exc:
            self._lost(f"the spawn server could not be reached: {exc}")
            raise SpawnerGone(f"the spawn server could not be reached: {exc}") from None
        asked: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asked.append(asked)
        try:
            # Shielded: the answer must still be taken in its turn, whatever the waiter.
            answer = await asyncio.wait_for(asyncio.shield(asked), ANSWER_TIMEOUT)
        except TimeoutError:
            self._lost("the spawn server did not answer in time")
            raise SpawnerGone("the spawn server did not answer in time") from None
        except asyncio.CancelledError:
            asked.add_done_callback(self._unwanted)
            raise
        if "pid" in answer:
            return int(answer["pid"])
        raise OSError(answer["errno"], answer["strerror"], answer["filename"])

    def _unwanted(self, asked: asyncio.Future[dict[str, Any]]) -> None:
        """A spawn whose caller went away meanwhile: what it started must not run unseen."""
        if asked.cancelled() or asked.exception() is not None or "pid" not in asked.result():
            return
        pid = int(asked.result()["pid"])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self.forget(pid)

    def watch(self, pid: int, exited: Callable[[int], None],
              orphaned: Callable[[], None]) -> None:
        """Tell `exited(code)` when `pid` ends, or `orphaned()` if the server dies first."""
        code = self._early.pop(pid, None)
        if code is not None:
            self._unwatched.discard(pid)
            exited(code)
        elif pid in self._unwatched:
            self._unwatched.discard(pid)
            self._watches[pid] = _Watch(exited, orphaned)
        else:
            orphaned()  # its server died between its answer and this watch

    def forget(self, pid: int) -> None:
        self._unwatched.discard(pid)
        self._watches.pop(pid, None)
        if self._early.pop(pid, None) is None:
            self._forgotten.add(pid)

    def close(self) -> None:
        """Stop the server (its children run on) and wait for it."""
        self._lost("")
        with contextlib.suppress(OSError):
            os.close(self._stdin)

    # ---- the server's frames ----------------------------------------------------------------

    def _ready(self) -> dict[str, Any]:
        """The started server's first frame, which says it is ready (waited for here: until
        it comes, nothing can be spawned)."""
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while (message := self._frame()) is None:
            assert self._sock is not None
            left = deadline - time.monotonic()
            ready = select.select([self._sock], [], [], max(left, 0.0))[0] if left > 0 else []
            chunk = self._sock.recv(1 << 16) if ready else b""
            if not chunk:
                why = "exited" if ready else "did not answer in time"
                self._lost(f"the spawn server {why}")
                raise SpawnerGone(f"the spawn server {why}")
            self._buffer += chunk
        return message

    def _frame(self) -> dict[str, Any] | None:
        """The next whole frame read, taken from the buffer; None if there is none yet."""
        if len(self._buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buffer)
        if len(self._buffer) < HEADER.size + size:
            return None
        message: dict[str, Any] = json.loads(self._buffer[HEADER.size:HEADER.size + size])
        del self._buffer[:HEADER.size + size]
        return message

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            chunk = self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            chunk = b""
            log.warning("reading from the spawn server failed: %s", exc)
        if not chunk:
            self._lost("the spawn server exited")
            return
        self._buffer += chunk
        while (message := self._frame()) is not None:
            self._take(message)

    def _take(self, message: dict[str, Any]) -> None:
        """One frame of the server's: a spawn's answer (in the order asked) or an end."""
        if ("pid" in message or "errno" in message) and self._asked:
            asked = self._asked.popleft()
            if "pid" in message:
                self._unwatched.add(int(message["pid"]))
            if not asked.done():
                asked.set_result(message)
            return
        if "exit" not in message:
            log.error("unexpected message from the spawn server: %r", message)
            return
        pid, code = int(message["exit"]), int(message["code"])
        if pid in self._forgotten:
            self._forgotten.discard(pid)
            return
        watch = self._watches.pop(pid, None)
        if watch is not None:
            watch.exited(code)
        else:
            self._early[pid] = code

    def _lost(self, why: str) -> None:
        """Stop using the server (kill it if it still runs); its attempts are orphans now."""
        sock, process = self._sock, self._process
        self._sock = self._process = None
        if sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        if process is not None:
            if why:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=ANSWER_TIMEOUT)
            if why:
                log.error("%s (status %s); what it started is watched from here", why,
                          process.returncode)
        self._early.clear()
        self._forgotten.clear()
        self._unwatched.clear()
        asked, self._asked = self._asked, deque()
        for spawn in asked:
            if not spawn.done():
                spawn.set_exception(SpawnerGone(why or "the spawn server was closed"))
        watches, self._watches = self._watches, {}
        for watch in watches.values():
            watch.orphaned()
