"""Control groups for attempts: what this machine offers, a group per attempt with its limits,
killing a group whole, and telling an out-of-memory kill (stdlib only: the reaper uses it).

Nothing is assumed about the machine. Build machines often mount cgroup v2 as a `unified`
subtree without controllers (which still gives `cgroup.kill`) beside v1 hierarchies that
hold the memory and pids controllers; others have v2 alone with everything; containers may
have none that are writable. `detect` looks at the mounts and at where this process sits,
makes this agent's own group in each usable hierarchy, and keeps what worked.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# The controllers we limit attempts with (v1 or v2); anything else stays as the machine has it.
CONTROLLERS = frozenset({"memory", "pids"})
# Rounds of "kill what is in the group" where there is no `cgroup.kill` (v1): a process
# forking in a loop is caught within a few rounds, as each round kills all it sees.
KILL_ROUNDS = 50
# Empty groups kept for the next attempts; beyond that, an ended attempt's group goes.
MAX_FREE = 256


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy, with the agent's own directory in it (`base`)."""

    version: int
    base: Path
    controllers: frozenset[str]

    @property
    def can_kill(self) -> bool:
        return self.version == 2 and (self.base / "cgroup.kill").exists()


def _mounts(mountinfo: str) -> Iterator[tuple[int, Path, str, frozenset[str]]]:
    """(version, mount point, mount root, controllers) of each cgroup mount."""
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        root, point = _unescape(fields[3]), Path(_unescape(fields[4]))
        if rest[0] == "cgroup2":
            yield 2, point, root, frozenset()
        elif rest[0] == "cgroup":
            wanted = frozenset(rest[2].split(",")) & CONTROLLERS
            if wanted:
                yield 1, point, root, wanted


def _unescape(field: str) -> str:
    """A mountinfo path: the kernel writes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Where this process sits: controller (or "" for v2) -> path in that hierarchy."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _within(point: Path, root: str, path: str) -> Path:
    """The directory of cgroup `path` under a mount of the hierarchy's `root`."""
    inside = root == "/" or path == root or path.startswith(root.rstrip("/") + "/")
    relative = os.path.relpath(path, root) if inside else "."
    return point if relative == "." else point / relative


def _write(path: Path, value: str) -> None:
    # O_NOFOLLOW: a group's files are the kernel's; a symlink there is someone else's.
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(text: str, name: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0


def _enable_v2(group: Path, controllers: Iterable[str]) -> None:
    """Ask for `controllers` in the children of `group`; refused ones are simply absent."""
    for controller in controllers:
        with contextlib.suppress(OSError):
            _write(group / "cgroup.subtree_control", f"+{controller}")


class Cgroups:
    """This agent's groups: one directory per usable hierarchy, attempts' groups in them."""

    def __init__(self, hierarchies: list[Hierarchy]) -> None:
        self.hierarchies = hierarchies
        v2 = [h for h in hierarchies if h.version == 2]
        self.killer = next((h for h in v2 if h.can_kill), None)
        self.memory = self._owner("memory")
        self.pids = self._owner("pids")
        self._free: list[AttemptGroup] = []
        self._slots = itertools.count(1)

    def _owner(self, controller: str) -> Hierarchy | None:
        # v2 first: where a machine offers both, the v2 one is what its kernel favours.
        ranked = sorted(self.hierarchies, key=lambda h: -h.version)
        return next((h for h in ranked if controller in h.controllers), None)

    @property
    def used(self) -> list[Hierarchy]:
        """The hierarchies attempts get a group in."""
        wanted = {id(h) for h in (self.killer, self.memory, self.pids) if h is not None}
        return [h for h in self.hierarchies if id(h) in wanted]

    def describe(self) -> str:
        """One line for `mesh agents`: how attempts are contained and limited here."""
        def where(h: Hierarchy | None) -> str:
            return f"v{h.version}" if h is not None else "none"
        kill = "cgroup.kill" if self.killer is not None else "signals"
        return f"cgroup (kill: {kill}, memory: {where(self.memory)}, pids: {where(self.pids)})"

    def bases(self) -> list[Path]:
        return [h.base for h in self.used]

    def clear_others(self, left_behind: Callable[[str], bool]) -> None:
        """Kill and remove the directories beside this agent's own whose names
        `left_behind` says an agent that is gone left there."""
        for base in self.bases():
            for other in _children(base.parent):
                if other != base and left_behind(other.name):
                    kill_tree(other)
                    remove(other, wait=2.0)

    def take(self, memory_limit: int | None, pids_max: int | None) -> AttemptGroup:
        """An empty group for one attempt, its limits set: without a memory limit, one that
        an ended attempt left empty if there is one (making and removing a group costs more
        than a short attempt's spawn); with one, always a new one (a used group still
        carries the memory charged to it, page cache and tmpfs files, and would count it
        against the next attempt)."""
        if memory_limit is None and self._free:
            return self._free.pop()  # its pids limit is the one every group here gets
        while True:
            try:
                group = self._make(f"slot-{next(self._slots)}")
                break
            except FileExistsError:
                # Left by this agent's groups as they were before a reaper that died
                # without removing them: attempts may still run there.
                continue
        try:
            group.limit(memory_limit, pids_max)
        except BaseException:
            group.remove(wait=0.0)
            raise
        return group

    def give_back(self, group: AttemptGroup, empty: bool) -> bool:
        """Keep an ended attempt's group for the next one if it is `empty` (as its
        `empty()` just said); False if it is not (a process is still leaving): the caller
        then removes it, off the loop."""
        if len(self._free) >= MAX_FREE or group.memory_limit is not None or not empty \
                or group.owner is not self:
            # (Another owner's: this agent's groups as they were before their reaper died,
            # which may have removed it.)
            return False
        self._free.append(group)
        return True

    def spawner_home(self) -> list[Path]:
        """The cgroup.procs files of the spawn server's own group, made if need be (beside
        the attempts' groups: a v2 group that has children holds no process itself)."""
        homes = [base / SPAWNER_GROUP for base in self.bases()]
        for home in homes:
            home.mkdir(mode=0o755, exist_ok=True)
        return [home / "cgroup.procs" for home in homes]

    def close(self) -> None:
        """Remove the groups kept for reuse and the spawn server's, and the agent's own
        directories if nothing else is left in them (the agent is going away)."""
        while self._free:
            self._free.pop().remove(wait=1.0)
        for base in self.bases():
            remove(base / SPAWNER_GROUP, wait=1.0)
        for base in self.bases():
            with contextlib.suppress(OSError):
                os.rmdir(base)

    def _make(self, name: str) -> AttemptGroup:
        made: list[tuple[Hierarchy, Path]] = []
        try:
            for hierarchy in self.used:
                path = hierarchy.base / name
                path.mkdir(mode=0o755)
                made.append((hierarchy, path))
        except BaseException:
            for _, path in made:
                remove(path, wait=0.0)
            raise
        return AttemptGroup(made, self)


class AttemptGroup:
    """One attempt's group (a directory in each used hierarchy); one without a memory limit
    is reused by later attempts, one with a limit serves a single attempt."""

    def __init__(self, paths: list[tuple[Hierarchy, Path]], owner: Cgroups) -> None:
        self.paths = paths
        self.owner = owner
        self.memory_limit: int | None = None

    def _path(self, hierarchy: Hierarchy | None) -> Path | None:
        return next((p for h, p in self.paths if h is hierarchy), None)

    def limit(self, memory: int | None, pids: int | None) -> None:
        """Set a new group's limits (None: none)."""
        memory_dir = self._path(self.owner.memory)
        if memory and memory_dir is not None:
            assert self.owner.memory is not None
            if self.owner.memory.version == 2:
                _write(memory_dir / "memory.max", str(memory))
                # An out-of-memory kill takes the whole attempt, not one arbitrary process.
                with contextlib.suppress(OSError):
                    _write(memory_dir / "memory.oom.group", "1")
            else:
                _write(memory_dir / "memory.limit_in_bytes", str(memory))
            self.memory_limit = memory
        pids_dir = self._path(self.owner.pids)
        if pids and pids_dir is not None:
            _write(pids_dir / "pids.max", str(pids))

    def procs_files(self) -> list[Path]:
        """Where a process writes "0" to join the group in every hierarchy."""
        return [path / "cgroup.procs" for _, path in self.paths]

    def join(self, pid: int) -> None:
        """Move `pid` into the group in every hierarchy (before it runs the action's code:
        its children are then born inside)."""
        for _, path in self.paths:
            _write(path / "cgroup.procs", str(pid))

    def kill(self) -> None:
        """SIGKILL every process in the group, those that left its process group too."""
        # Every hierarchy's group holds the same processes: one kill reaches them all.
        killer = self._path(self.owner.killer)
        kill_tree(killer if killer is not None else self.paths[0][1])

    def empty(self) -> bool:
        """No process in the group or below it (an action may make groups of its own)."""
        # Every hierarchy's group holds the same processes: one look tells.
        killer = self._path(self.owner.killer)
        if killer is not None:
            return _counter(_read(killer / "cgroup.events"), "populated") == 0
        top = self.paths[0][1]
        return not any(_procs(group) for group in [top, *_descendants(top)])

    def oom_kills(self) -> int:
        """Processes of this attempt the kernel killed for exceeding its memory limit (a
        limited group serves one attempt, so all the kernel counted are its own)."""
        memory_dir = self._path(self.owner.memory)
        if memory_dir is None or self.owner.memory is None or not self.memory_limit:
            return 0
        if self.owner.memory.version == 2:
            return _counter(_read(memory_dir / "memory.events"), "oom_kill")
        return _counter(_read(memory_dir / "memory.oom_control"), "oom_kill")

    def remove(self, wait: float = 5.0) -> bool:
        """Remove the group's directories (killing what is left); False if one stayed."""
        self.kill()
        return all([remove(path, wait) for _, path in self.paths])


def _children(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def _procs(path: Path) -> list[int]:
    try:
        fd = os.open(path / "cgroup.procs", os.O_RDONLY)
    except OSError:
        return []
    try:
        data = b"".join(iter(lambda: os.read(fd, 65536), b""))
    except OSError:
        data = b""
    finally:
        os.close(fd)
    return [int(p) for p in data.split()]


def kill_tree(path: Path) -> int:
    """SIGKILL every process in the group at `path` and its descendants; return how many
    signals were sent (a v2 `cgroup.kill` counts as one)."""
    if (path / "cgroup.kill").exists():
        try:
            _write(path / "cgroup.kill", "1")
            return 1
        except OSError:
            pass  # the root group, or an old kernel's: kill by hand below
    sent = 0
    for _ in range(KILL_ROUNDS):
        found = [pid for group in [path, *_descendants(path)] for pid in _procs(group)]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                sent += 1
        time.sleep(0.005)  # let the killed leave before looking again
    return sent


def _descendants(path: Path) -> list[Path]:
    found = []
    for child in _children(path):
        found += [child, *_descendants(child)]
    return found


def remove(path: Path, wait: float) -> bool:
    """rmdir the group at `path` and its descendants, deepest first, retrying while a
    just-killed process is still leaving; False if one was still busy after `wait` s."""
    deadline = time.monotonic() + wait
    for group in [*reversed(_descendants(path)), path]:
        while True:
            try:
                os.rmdir(group)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
    return True


# The spawn server's own group, in each of the agent's directories.
SPAWNER_GROUP = "spawner"
# An agent's control groups are named this, its node, its process's token and its pid.
AGENT_PREFIX = "actionmesh-"


def agent_groups(agent_id: str, token: str) -> Cgroups | None:
    """This agent process's control groups, with what agents that are gone left beside
    them cleared. Named by process (token and pid), not by node: a dying agent's reaper
    removes its own groups, never those of the agent that replaced it; and a machine that
    lost an agent with its reaper (both killed) has them cleared by the next."""
    found = detect(f"{AGENT_PREFIX}{agent_id}-{token[:12]}-{os.getpid()}")
    if found is not None:
        found.clear_others(lambda name: _left_behind(agent_id, name))
    return found


def _left_behind(agent_id: str, name: str) -> bool:
    """Whether the control groups named `name` are an agent's that is gone: an earlier one
    of this node, or one of any node whose process has ended."""
    if not name.startswith(AGENT_PREFIX):
        return False
    if name.startswith(f"{AGENT_PREFIX}{agent_id}-"):
        return True
    pid = name.rsplit("-", 1)[-1]
    if not pid.isdigit():
        return False  # not named by this release: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def detect(name: str, mountinfo: str | None = None, proc_cgroup: str | None = None,
           ) -> Cgroups | None:
    """This agent's groups (directory `name` under where this process sits, in each usable
    hierarchy), or None where the machine offers none the agent may write."""
    if mountinfo is None:
        mountinfo = _read(Path("/proc/self/mountinfo"))
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup"))
    own = _own_paths(proc_cgroup)
    hierarchies: list[Hierarchy] = []
    seen: set[Path] = set()
    for version, point, root, controllers in _mounts(mountinfo):
        key = "" if version == 2 else next(iter(sorted(controllers)))
        if key not in own or point in seen:
            continue
        seen.add(point)
        parent = _within(point, root, own[key])
        base = parent / name
        try:
            if base.is_symlink():
                continue
            base.mkdir(mode=0o755, exist_ok=True)
        except OSError:
            continue  # not ours to write (a container, another user's hierarchy)
        if version == 2:
            wanted = set(_read(parent / "cgroup.controllers").split()) & CONTROLLERS
            _enable_v2(parent, wanted)
            _enable_v2(base, wanted)
            controllers = frozenset(_read(base / "cgroup.subtree_control").split()) \
                & CONTROLLERS
        hierarchies.append(Hierarchy(version, base, controllers))
    found = Cgroups(hierarchies)
    if not found.used:
        for hierarchy in hierarchies:
            remove(hierarchy.base, wait=0.0)
        return None
    return found
