"""How an attempt's main process is started: through the spawn server where attempts get
control groups, else by the agent, through a gate shell where the process must first be put
somewhere (its group, or another user) before it runs the action."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from agent.cgroups import AttemptGroup, Cgroups
from agent.child import ChildProcess
from agent.programs import Programs
from agent.runas import RunAs
from agent.spawner import Spawner, SpawnerGone
from mesh.schema import MeshConfig

log = logging.getLogger(__name__)


class Launcher:
    """Starts attempts' main processes for one executor."""

    def __init__(self) -> None:
        self._programs = Programs()
        self.spawner: Spawner | None = None

    def start_spawner(self, groups: Callable[[], Cgroups | None], user: RunAs,
                      config: MeshConfig) -> None:
        """Start the spawn server, where attempts can be born in control groups through it:
        not as another user (it would have to switch users too), nor with room for one
        process per attempt (it joins the group beside the newborn), nor without pidfds
        (the agent could not watch what it started should it die). `groups`: the
        executor's control groups now (made anew after its reaper died)."""
        first = groups()
        if (self.spawner is not None or first is None or user.switches
                or config.pids_max == 1 or not hasattr(os, "pidfd_open")):
            return
        spawner = Spawner(lambda: (groups() or first).spawner_home())
        try:
            spawner.start()
        except (SpawnerGone, OSError) as exc:
            log.error("no spawn server (%s): attempts start through a gate shell", exc)
            spawner.close()
            return
        self.spawner = spawner

    async def launch(self, child: ChildProcess, group: AttemptGroup | None, user: RunAs,
                     command: list[str], workdir: str, env: dict[str, str]) -> None:
        """Start `command` as `child`, inside `group` from its first instruction; raises
        what exec would (OSError), SpawnerGone if the spawn server failed it."""
        switched = user.switches
        gated = group is not None or switched
        if gated and not switched:
            # Found as the agent's user, who is the one that will exec it.
            program = self._programs.find(command[0], env.get("PATH", ""), workdir)
            if self.spawner is not None and group is not None:
                await child.spawn_in(self.spawner, group.procs_files(), program, command,
                                     os.path.abspath(workdir), env)
                return
        # Another user enters its working directory itself (the gate's `cd`): Popen
        # would enter it as the agent, past directories that user may not pass.
        child.spawn(command, workdir, env, gated=gated, user=user if switched else None)
        if group is not None:
            group.join(child.pid)
        if gated:
            child.release()

    def close(self) -> None:
        if self.spawner is not None:
            self.spawner.close()
            self.spawner = None
