"""Real Ray clusters for integration tests: the mesh started and stopped on a
`ray.cluster_utils.Cluster`, accounts that a test creates and removes, and what tests look
for on a cluster (the scheduler's process, an action's surviving processes, the runs that
actions log)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from mesh import bootstrap, names
from mesh.client import Client
from mesh.errors import NotFound
from mesh.names import ENV_ACTION
from mesh.schema import AccountConfig, AccountStatus, MeshConfig
from mesh.waiting import wait_until

# The shared mesh's shape. The head carries no agent, so what runs where is decided by the
# two workers alone: `big` offers 2 CPUs and `vpn`, `small` offers 1 CPU and `pool:small`.
# No dashboard: no test reads it, and its forkserver, killed with the cluster, left a
# `pymp-*` directory in the temp dir after every cluster.
HEAD = {"num_cpus": 1, "labels": {names.AGENT_OPT_OUT: "off"}, "include_dashboard": False,
        "_system_config": bootstrap.health_checks()}
BIG = {"num_cpus": 2, "labels": {"vpn": "", "pool": "big"}}
SMALL = {"num_cpus": 1, "labels": {"pool": "small"}}


@dataclass
class Mesh:
    cluster: Cluster
    client: Client
    config: MeshConfig
    big_id: str
    small_id: str


def start_mesh(tmp: Path, *workers: dict[str, Any], **options: Any,
               ) -> tuple[Cluster, MeshConfig, list[str]]:
    """A new cluster (head without an agent, then `workers`), connected, with the mesh up
    (`options`: MeshConfig fields) and its state in `tmp`; returns the workers' node ids."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    cluster = Cluster(initialize_head=True, head_node_args=dict(HEAD))
    node_ids = [cluster.add_node(**w).node_id for w in workers]
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, namespace=names.NAMESPACE, log_to_driver=False)
        config = MeshConfig(state_dir=str(tmp), kill_grace=2.0, **options)
        bootstrap.up(config)
    except BaseException:
        tear_down(cluster)  # else every later test finds Ray still connected
        raise
    return cluster, config, node_ids


def stop_mesh(cluster: Cluster) -> None:
    """`mesh down` (agents stopped, their attempts killed), then the cluster."""
    try:
        bootstrap.down(stop_cluster=False)
    finally:
        tear_down(cluster)


def tear_down(cluster: Cluster) -> None:
    """Disconnect and stop every node at once, as a head that dies takes its cluster down:
    nothing of the mesh is told."""
    ray.shutdown()
    cluster.shutdown()  # type: ignore[no-untyped-call]  # Ray's Cluster is not annotated


class Accounts:
    """The accounts one test creates on a shared mesh, so that the next test does not see
    them: `remove` cancels their unfinished actions (an account in use cannot be deleted),
    waits until those have ended, then deletes the accounts."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.ids: list[str] = []

    def create(self, account_id: str, config: AccountConfig | None = None,
               **fields: Any) -> AccountStatus:
        """`Client.create_account`, the account removed after the test."""
        self.own(account_id)
        return self.client.create_account(account_id, config, **fields)

    def own(self, account_id: str) -> None:
        """Remove after the test an account that the test creates some other way (the CLI,
        the README's example, or a create that is itself under test)."""
        self.ids.append(account_id)

    def remove(self) -> None:
        for account_id in dict.fromkeys(reversed(self.ids)):
            self._cancel_unfinished(account_id)
            with contextlib.suppress(NotFound):  # the test may have deleted it itself
                self.client.delete_account(account_id)

    def _cancel_unfinished(self, account_id: str) -> None:
        unfinished = [s.id for s in self.client.list()
                      if not s.done and s.action.account == account_id]
        for action_id in unfinished:
            self.client.cancel(action_id)
        wait_until(lambda: [self.client.get(a) for a in unfinished],
                   lambda statuses: all(s.done for s in statuses), timeout=60,
                   what=f"the unfinished actions of account {account_id!r} cancelled")


ROOT = Path(__file__).resolve().parents[2]


def mesh_cli(mesh: Mesh, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The `mesh` CLI in a subprocess, against this mesh's cluster (`auto` would find
    whichever cluster on this machine started last)."""
    return subprocess.run([sys.executable, "-m", "mesh.cli", "--address", mesh.cluster.address,
                           *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          check=False)


def survivors(action_id: str) -> list[int]:
    """Pids of processes still carrying the action's id in their environment."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(ENV_ACTION) == action_id:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def scheduler_pid() -> int:
    return bootstrap.actor_pid(names.SCHEDULER)


def runs(log: Path) -> list[str]:
    """The ids that actions appended to `log`, one line per run that got to its end."""
    return log.read_text().split() if log.exists() else []


@contextlib.contextmanager
def small_disk(where: Path, size: str, skip: bool = True) -> Iterator[Path | None]:
    """A tmpfs of `size` of its own at `where`. Mounting needs root: without it the test is
    skipped, saying so, or (`skip=False`) given None."""
    where.mkdir()
    mounted = (subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                               str(where)], capture_output=True, text=True, check=False)
               if os.geteuid() == 0 else None)
    if mounted is None or mounted.returncode != 0:
        why = ("mounting a small tmpfs for the state dir needs root" if mounted is None
               else f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
        if skip:
            pytest.skip(why)
        print(f"no small disk: {why}")
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file; deleting it frees them."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * block):
                    pass
    finally:
        os.close(fd)
    return filler
