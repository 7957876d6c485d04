"""The spawn server: starts an agent's contained attempts, each born inside its control
groups, and tells the agent when each one ends.

The agent (agent/spawner.py) runs it as `python -I -S spawnserver.py FD HOME...`: FD is its
end of a Unix stream socket, each HOME a `cgroup.procs` file of the server's own groups. It
uses only the standard library, so it starts in milliseconds and holds little memory.

Why a process of its own: a child is born in its parent's control groups. The agent is a
multithreaded Ray worker. It cannot step into an attempt's groups itself, because all its
threads, its memory charge and its process count would go with it. Nor can it run code
between fork and exec. This process is small and has one thread. For each attempt it
enters the attempt's groups, posix_spawns the program there (vfork, then exec: nothing of
the program runs outside them), and goes back to its own groups before it answers. The
other way is a shell that waits until the agent has moved it, then execs the program. That
costs one more exec per attempt: 0.6-0.8 ms of CPU here, as much as running `true` does.

Frames both ways are a 4-byte big-endian length, then JSON.
- A request carries the attempt's stdin, stdout and stderr as SCM_RIGHTS on its first
  byte: {"path", "argv", "env", "cwd", "groups": [cgroup.procs files]}.
- Each request is answered in order: {"pid": N} or {"errno": N, "strerror": S,
  "filename": F}.
- Whenever a child ends: {"exit": PID, "code": C} (C as subprocess gives it: -N for
  signal N).
- At start, once the server is in its own groups: {"ready": PID}.

The server ends when the agent's end of the socket closes. Its children then run on; the
agent's reaper sees to them.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
from array import array
from typing import Any

HEADER = struct.Struct(">I")
MAX_FDS = 3


def frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return HEADER.pack(len(data)) + data


def enter(procs: list[str]) -> None:
    """Move this process into the groups whose `cgroup.procs` files these are."""
    for path in procs:
        # O_NOFOLLOW: a group's files are the kernel's; a symlink there is someone else's.
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            go_in(fd)
        finally:
            os.close(fd)


def go_in(fd: int) -> None:
    os.write(fd, b"0")  # "0": the writer itself


def _exactly(sock: socket.socket, size: int, have: bytes = b"") -> bytes | None:
    data = bytearray(have)
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """The next request and its descriptors (close-on-exec until dup2'd); None at EOF."""
    # Not socket.recv_fds: it drops its flags argument (Python 3.11).
    first, ancillary, _, _ = sock.recvmsg(HEADER.size, socket.CMSG_SPACE(MAX_FDS * 4),
                                          socket.MSG_CMSG_CLOEXEC)
    fds = array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    header = _exactly(sock, HEADER.size, first)
    if header is None:
        return None
    body = _exactly(sock, HEADER.unpack(header)[0])
    if body is None:
        return None
    return json.loads(body), list(fds)


def spawn(request: dict[str, Any], fds: list[int], ignored: tuple[int, ...]) -> dict[str, Any]:
    """Start one attempt inside its groups; the answer for the agent."""
    try:
        if len(fds) != MAX_FDS:
            raise OSError(0, f"expected stdin, stdout and stderr, got {len(fds)} descriptors")
        enter(request["groups"])
        try:
            os.chdir(request["cwd"])
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, request["cwd"]) from None
        pid = os.posix_spawn(
            request["path"], request["argv"], request["env"],
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
            # Its own session, as the agent's Popen gives (pgid == pid); signals this
            # process ignores (Python ignores SIGPIPE) back at their defaults. (glibc
            # leaves its two internal signals, 32 and 33, ignored in any posix_spawn
            # child; programs that use them set their own handlers.)
            setsid=True, setsigdef=ignored, setsigmask=())
        return {"pid": pid}
    except OSError as exc:
        return {"errno": exc.errno, "strerror": exc.strerror or str(exc),
                "filename": exc.filename}
    finally:
        for fd in fds:
            os.close(fd)


def reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.sendall(frame({"exit": pid, "code": os.waitstatus_to_exitcode(status)}))


def serve(sock: socket.socket, home: list[str]) -> None:
    ignored = tuple(s for s in signal.valid_signals()
                    if signal.getsignal(s) is signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    os.chdir("/")
    # Opened once: the server goes home after every spawn.
    homes = [os.open(path, os.O_WRONLY | os.O_NOFOLLOW) for path in home]
    for fd in homes:
        go_in(fd)
    sock.sendall(frame({"ready": os.getpid()}))
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            reap(sock)
        if sock.fileno() in ready:
            request = receive(sock)
            if request is None:
                return  # the agent is gone
            answer = spawn(*request, ignored)
            # Home before the answer: once the agent has it, the attempt's group holds
            # only the attempt (the agent may find it empty, or kill all in it). If this
            # fails, so does the server: the agent takes the start as not carried out.
            os.chdir("/")
            for fd in homes:
                go_in(fd)
            sock.sendall(frame(answer))


def main() -> None:
    fd, *home = sys.argv[1:]
    sock = socket.socket(fileno=int(fd))
    sock.set_inheritable(False)
    serve(sock, home)


if __name__ == "__main__":
    main()
