"""What containing attempts costs: throughput and latency of `true` actions with each attempt
in a control group of its own, against the same runs with the process group alone.

The clean environment and the private workspace are always on (there is no mesh without
them to compare with); `agent_costs` times them apart, per attempt, beside a spawn.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from agent.workspace import Workspaces
from bench.rounds import compare


def agent_costs(n: int = 500) -> None:
    """Per attempt, in CPU time: a private workspace made and removed, and one handed on
    to the next attempt (as where a control group shows the last attempt is gone), against
    spawning `true`."""
    with tempfile.TemporaryDirectory(prefix="meshbench-work-") as root:
        workspaces = Workspaces(Path(root) / "agent")
        workspaces.clear()
        start = time.process_time()
        for i in range(n):
            workspaces.remove(workspaces.make(f"a{i}", 1))
        fresh = (time.process_time() - start) / n
        start = time.process_time()
        for i in range(n):
            workspaces.release(workspaces.make(f"b{i}", 1), reusable=True)
        reused = (time.process_time() - start) / n
        workspaces.close()
    start = time.process_time()
    for _ in range(n):
        subprocess.Popen(["true"], start_new_session=True).wait()
    spawn = (time.process_time() - start) / n
    print(f"per attempt, CPU: workspace made and removed {fresh * 1e6:.0f} us, handed on "
          f"{reused * 1e6:.0f} us; spawning `true` {spawn * 1e6:.0f} us (the agent's side)")


def main() -> None:
    contained, plain = compare("cgroup / process group", {"cgroups": True},
                               {"cgroups": False}, ">= 0.9")
    print(f"contained by: {contained[0].agent.info.containment}; "
          f"baseline: {plain[0].agent.info.containment}")
    agent_costs()


if __name__ == "__main__":
    main()
