"""What an attempt's process starts from: an environment of its own, never the agent's, and
a private working directory per attempt."""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from agent.runas import RunAs

# Where the attempt's private directory is; also its working directory unless it names one.
ENV_WORKSPACE = "ACTIONMESH_WORKSPACE"
# Taken from the agent's environment when it has them: where programs are and how text is
# spelled are not secrets. Nothing else of the agent's (RAY_*, tokens, its PYTHONPATH) is.
CARRIED = ("PATH", "LANG", "LC_ALL", "TZ")
DEFAULTS = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8"}
# Empty directories of ended attempts kept for the next ones; beyond that, one goes.
MAX_FREE = 64


def workspace_root(configured: str | None) -> Path:
    """Where this machine's agents keep their attempts' directories."""
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"actionmesh-work-{os.getuid()}"


def base_environment(agent_env: Mapping[str, str], user: RunAs) -> dict[str, str]:
    """The documented base every attempt gets before its own `env`, for the user it runs as."""
    env = dict(DEFAULTS)
    env.update({name: agent_env[name] for name in CARRIED if agent_env.get(name)})
    env.update(HOME=user.home, USER=user.name, LOGNAME=user.name, SHELL="/bin/sh")
    return env


class Workspaces:
    """The attempts' private directories under one root (made 0700, as each of them is).

    Where attempts run as the agent's own user, a directory an attempt left empty, with
    nothing of that attempt still running, is renamed for the next attempt rather than
    removed and made again (attempts of one user can reach each other's files anyway;
    those of another user never get a used one, as nothing else of that user need have
    ended with the attempt, nor its extended attributes and ACLs): on an ext4 disk
    mounted with `discard` (as this project's build machines are) a mkdir and an rmdir
    take 0.15-0.3 ms of CPU and up to 0.5 ms on the clock, on the agent's event loop; the
    look inside and the rename that hand one on take under 0.06 ms. Until it is taken, a
    kept directory still bears its last attempt's name.
    """

    def __init__(self, root: Path, keep: bool = False, owner: RunAs | None = None) -> None:
        self.root = root
        self.keep = keep
        # The user attempts run as, when not the agent's: each directory is made theirs.
        self.owner = owner
        self._free: list[Path] = []
        self._names = itertools.count(1)

    def clear(self) -> None:
        """Remove what an earlier agent on this node left (its attempts died with it)."""
        if self.root.is_symlink():
            raise OSError(f"workspace root {self.root} is a symlink; refusing to use it")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_uid != os.getuid():
            raise OSError(f"workspace root {self.root} belongs to another user")
        # Another user's attempts must pass through it to their own directory (0711: pass,
        # not list); with the agent's own user, nobody else needs to.
        os.chmod(self.root, 0o711 if self.owner is not None else 0o700)
        for left in self.root.iterdir():
            # rmtree does not follow symlinks inside; a symlink itself is only unlinked.
            if left.is_dir() and not left.is_symlink():
                shutil.rmtree(left, ignore_errors=True)
            else:
                left.unlink(missing_ok=True)

    def make(self, action_id: str, attempt: int) -> Path:
        prefix = "".join(c if c.isalnum() or c in "-_." else "_" for c in action_id[:40])
        while self._free:
            reused = self._reuse(self._free.pop(), f"{prefix}-{attempt}-")
            if reused is not None:
                return reused
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}-{attempt}-", dir=self.root))
        if self.owner is not None:
            os.chown(path, self.owner.uid, self.owner.gid)
        return path

    def _reuse(self, free: Path, prefix: str) -> Path | None:
        """A kept directory under a new name (mkdtemp's names end in 8 characters, these in
        `+N`, so the two never meet), private again; None if it is not fit to be one."""
        path = free
        try:
            if not stat.S_ISDIR(os.lstat(free).st_mode):
                return None
            renamed = self.root / f"{prefix}+{next(self._names)}"
            os.rename(free, renamed)
            path = renamed
            # The attempt owned it and may have opened it up.
            os.chmod(path, 0o700)
        except OSError:
            self.remove(path)  # (what is not empty the next agent's `clear` removes)
            return None
        return path

    def release(self, path: Path, reusable: bool) -> bool:
        """Done with an attempt's directory: hand it on to the next attempt if it is empty
        and `reusable` (none of the attempt's processes can still run), else delete it if
        it is empty; False if it has contents left for `remove_tree`."""
        return (reusable and self._hand_on(path)) or self.remove(path)

    def _hand_on(self, path: Path) -> bool:
        if self.keep or self.owner is not None or len(self._free) >= MAX_FREE:
            return False
        try:
            with os.scandir(path) as entries:
                if next(entries, None) is not None:
                    return False
        except OSError:
            return False
        self._free.append(path)
        return True

    def remove(self, path: Path) -> bool:
        """Delete an attempt's directory if it is empty (no walk, no thread), or kept for
        debugging; False if it has contents left for `remove_tree`."""
        if self.keep:
            return True
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def remove_tree(self, path: Path) -> None:
        """Delete an attempt's directory with its contents (slow: not on the event loop)."""
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Remove the directories kept for reuse (the agent is going away)."""
        while self._free:
            self.remove(self._free.pop())
