"""What an attempt execs: its argv, whether its program can be exec'd here, and what a
spawn that failed says."""

from __future__ import annotations

import os
import shutil

from mesh.protocol import Assignment

# Programs whose place on a PATH is kept (see Programs); past this, all are forgotten.
MAX_KNOWN_PROGRAMS = 256


def argv(assignment: Assignment) -> list[str]:
    action = assignment.action
    return ["/bin/sh", "-c", action.command[0]] if action.shell else list(action.command)


class Programs:
    """Finds the file a program names, raising what exec would: a gated start (see
    ChildProcess) execs it from a shell, which would otherwise turn "not found" into exit
    code 127, and the spawn server (see agent/spawnserver.py) execs the file it is given.

    Where a name without a slash was last found on a PATH is kept, and a start looks at that
    one file again rather than walking the PATH (`shutil.which` looks in every directory up
    to it: a tenth of a short attempt's start); a file that is gone is looked for again.
    """

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], str] = {}

    def find(self, program: str, path: str, cwd: str) -> str:
        """The file to exec for `program`, looked for on `path` (a name with a slash is
        the file itself, from `cwd`)."""
        if "/" in program:
            where = os.path.join(cwd, program)
            if not os.path.exists(where):
                raise FileNotFoundError(2, "No such file or directory", program)
            if not _executable(where):
                raise PermissionError(13, "Permission denied", program)
            return where
        known = self._found.get((program, path))
        if known is not None and _executable(known):
            return known
        found = shutil.which(program, path=path)
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", program)
        if len(self._found) >= MAX_KNOWN_PROGRAMS:
            self._found.clear()
        self._found[(program, path)] = found
        return found


def _executable(where: str) -> bool:
    return os.access(where, os.X_OK) and not os.path.isdir(where)


def spawn_failure(exc: Exception, argv: list[str], cwd: str | None) -> str:
    """The reason a start that could not spawn ends with."""
    if not isinstance(exc, OSError):
        return f"could not start {argv[0]!r}: {exc}"
    why = exc.strerror or str(exc)
    if cwd is not None and exc.filename == cwd:
        return f"could not enter working directory {cwd!r}: {why}"
    return f"could not start {argv[0]!r}: {why}"
