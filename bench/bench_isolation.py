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
    """Per attempt: a private workspace made and removed, against spawning `true`."""
    with tempfile.TemporaryDirectory(prefix="meshbench-work-") as root:
        workspaces = Workspaces(Path(root) / "agent")
        workspaces.clear()
        start = time.perf_counter()
        for i in range(n):
            workspaces.remove(workspaces.make(f"a{i}", 1))
        workspace = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n):
        subprocess.Popen(["true"], start_new_session=True).wait()
    spawn = (time.perf_counter() - start) / n
    print(f"per attempt: workspace made and removed {workspace * 1e6:.0f} us; "
          f"spawning `true` {spawn * 1e6:.0f} us")


def main() -> None:
    contained, plain = compare("cgroup / process group", {"cgroups": True},
                               {"cgroups": False}, ">= 0.9")
    print(f"contained by: {contained[0].agent.info.containment}; "
          f"baseline: {plain[0].agent.info.containment}")
    agent_costs()


if __name__ == "__main__":
    main()
