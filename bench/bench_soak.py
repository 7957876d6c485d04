"""Soak: 200,000 `true` actions through a local mesh with a 60 s retention.

Printed at 10 % and at 100 % of the run: the scheduler's and the relay's RSS, the state
database's size (with its WAL) and the log spill directory's. Target: each end figure within
1.2x of its 10 % figure. Then the scheduler's restart (SIGKILL to answering a client) with
the history the run left, against the same restart with an empty history at the start of
the run (medians of three). Target: <= 1.5x.
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from bench.harness import local_mesh, report, scheduler_pid
from mesh import names
from mesh.bootstrap import actor_pid
from mesh.client import Client
from mesh.schema import Action, MeshConfig

TOTAL = int(os.environ.get("SOAK_ACTIONS", "200000"))
BATCH = 1000
# Submitted but unfinished, at most: seconds of work for the agent, yet small beside the
# history retention keeps. At 6,000 the queue was a third of what the database held at 10 %
# of the run, and its drain at the end (thousands of actions finishing in the last seconds,
# faster once submissions stop) made the end figure measure the queue, not the history.
IN_FLIGHT = 2000
RETENTION = 60.0
RESTARTS = 3


def rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def figures(state: Path) -> dict[str, float]:
    return {
        "scheduler RSS MiB": rss(scheduler_pid()) / 2**20,
        "relay RSS MiB": rss(actor_pid(names.RELAY)) / 2**20,
        "database MiB": sum(size(state / f"scheduler.db{s}") for s in ("", "-wal")) / 2**20,
        "spill MiB": size(state / "logs") / 2**20,
    }


def restart(client: Client) -> float:
    """Median of RESTARTS restarts: one alone is as noisy as the machine."""
    took = []
    for _ in range(RESTARTS):
        killed = time.monotonic()
        os.kill(scheduler_pid(), signal.SIGKILL)
        client.counts()
        took.append(time.monotonic() - killed)
    print("restarts:", ", ".join(f"{t:.2f}s" for t in took), flush=True)
    return statistics.median(took)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="meshsoak-") as directory:
        state = Path(directory)
        config = MeshConfig(state_dir=directory, retention=RETENTION)
        with local_mesh(num_cpus=2, config=config) as client:
            empty = restart(client)
            began = time.monotonic()
            submitted = 0
            tenth: dict[str, float] | None = None
            while True:
                counts = client.counts()
                unfinished = counts["queued"] + counts["assigned"] + counts["running"]
                if tenth is None and submitted - unfinished >= TOTAL // 10:
                    tenth = figures(state)
                    print(f"at 10% ({submitted - unfinished} done, "
                          f"{time.monotonic() - began:.0f}s): {tenth}", flush=True)
                if submitted >= TOTAL and unfinished == 0:
                    break
                if submitted >= TOTAL or unfinished > IN_FLIGHT - BATCH:
                    time.sleep(0.2)
                    continue
                batch = min(BATCH, TOTAL - submitted)
                client.submit_many([Action(command=["true"])] * batch)
                submitted += batch
            took = time.monotonic() - began
            end = figures(state)
            print(f"at 100% ({TOTAL} done, {took:.0f}s, {TOTAL / took:.0f}/s): {end}",
                  flush=True)
            assert tenth is not None
            for key, value in end.items():
                if not value and not tenth[key]:
                    print(f"soak {key}: none at 10% nor at the end")
                    continue
                report(f"soak {key} (end vs 10%)", value, tenth[key], "", "<= 1.2",
                       higher_is_better=False)
            full = restart(client)
            report("soak restart with the run's history vs an empty one", full, empty, "s",
                   "<= 1.5", higher_is_better=False)


if __name__ == "__main__":
    main()
