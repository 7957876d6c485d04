"""One cluster per state dir, and only its user: the directory checked private, and the lock
each mesh actor holds on its part of it, naming its owner.

Two clusters writing one state dir would reuse attempt numbers and delete each other's logs,
so the scheduler and the relay each hold an exclusive `flock` on a file of their own there
for as long as their process lives (the kernel drops it when the process dies, however it
dies), with the owner written inside for the message the next claimant gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import time
from pathlib import Path

from pydantic import ValidationError

from mesh.errors import StateDirInUse, StateDirUnsafe
from mesh.schema import Model

# How long a claimant waits for a holder of its own cluster: a predecessor being killed or
# restarted may not have exited yet. Another cluster's holder is refused at once.
SUCCESSION_WAIT = 30.0
_POLL = 0.1


class Owner(Model):
    """Who holds a state dir lock (read back from the lock file, so validated)."""

    cluster: str
    host: str
    pid: int
    since: float

    @classmethod
    def here(cls, cluster: str) -> Owner:
        return cls(cluster=cluster, host=socket.gethostname(), pid=os.getpid(),
                   since=time.time())

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"cluster {self.cluster} (pid {self.pid} on {self.host}, since {when})"


def private_dir(path: Path, what: str = "state dir") -> None:
    """Make `path` (mode 0700) or check the one there: StateDirUnsafe if it is a symlink,
    not a directory, another user's, or writable by group or others (who could plant
    symlinks in it, or read and replace what the mesh keeps)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        found = os.lstat(path)
    except OSError as exc:
        raise StateDirUnsafe(f"{what} {path} cannot be made or read: {exc}. Give another one "
                             "(mesh up --state-dir DIR)") from None
    uid = os.geteuid()
    if stat.S_ISLNK(found.st_mode):
        why = "is a symlink (the mesh does not follow one for its state)"
    elif not stat.S_ISDIR(found.st_mode):
        why = "is not a directory"
    elif found.st_uid != uid:
        why = f"belongs to uid {found.st_uid}, not to this user (uid {uid})"
    elif found.st_mode & 0o022:
        why = (f"is writable by {'group and others' if found.st_mode & 0o002 else 'group'} "
               f"(mode {stat.S_IMODE(found.st_mode):04o}; `chmod go-w {path}` if it is yours)")
    else:
        if found.st_mode & 0o077:
            # Ours, and not writable by others, but readable: made by an older release.
            os.chmod(path, 0o700)
        return
    raise StateDirUnsafe(f"{what} {path} {why}; refusing to keep the mesh's state there. "
                         "Give another one (mesh up --state-dir DIR)")


class StateDirLock:
    """The exclusive lock of one role (`scheduler`, `relay`) on a state dir."""

    def __init__(self, directory: str | Path, role: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{role}.lock"
        self.role = role
        self._fd: int | None = None

    def acquire(self, owner: Owner, wait: float = SUCCESSION_WAIT) -> None:
        """Take the lock and write `owner` into it. StateDirInUse naming the holder if
        another cluster holds it, or one of `owner`'s cluster still does after `wait` s."""
        private_dir(self.directory)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if (holder is None or holder.cluster != owner.cluster
                        or time.monotonic() >= deadline):
                    os.close(fd)
                    raise StateDirInUse(
                        f"state dir {self.directory} is in use by the {self.role} of "
                        f"{holder.describe() if holder else _UNNAMED}; stop that mesh "
                        "(`mesh down` on its cluster) or give this one another --state-dir",
                    ) from None
                time.sleep(_POLL)
            except BaseException:
                os.close(fd)
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.model_dump_json().encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


_UNNAMED = "another process (its lock file does not say which)"


def _holder(fd: int) -> Owner | None:
    try:
        return Owner.model_validate_json(os.pread(fd, 4096, 0))
    except (OSError, ValidationError):
        return None
