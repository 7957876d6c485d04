"""Bringing the mesh up and down on a Ray cluster, starting a local cluster when there is none."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import ray
from ray._private.services import find_gcs_addresses
from ray.exceptions import RayError

from mesh import calls, names
from mesh.errors import (
    ClusterUnavailable,
    MeshError,
    MeshNotRunning,
    StateDirRefused,
    WaitTimeout,
)
from mesh.gateway import GatewayActor, gateway_options
from mesh.relay import LogRelay, relay_options
from mesh.schema import MeshConfig
from mesh.waiting import wait_until
from scheduler.actor import SchedulerActor, scheduler_options

log = logging.getLogger("actionmesh")

# Unclean node death is seen in ~2.3 s with these, against ~13.5 s with Ray's defaults;
# 500/500/2 once declared a healthy head dead on a 2-core machine (RAY_NOTES.md §1).
# Read-only: `ray.init(_system_config=...)` adds its own keys to the dict it is given, so
# callers pass `health_checks()`, a fresh copy.
HEALTH_CHECKS: Mapping[str, int] = MappingProxyType({
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
})


def health_checks() -> dict[str, int]:
    return dict(HEALTH_CHECKS)


STOP_TIMEOUT = 30.0


def marker_path() -> Path:
    """Where `mesh up` records that it started the local cluster, so `mesh down` stops it."""
    return Path(os.environ.get("ACTIONMESH_HOME", Path.home() / ".actionmesh")) / "local.json"


def cluster_running() -> bool:
    """True when `ray.init(address="auto")` would find a cluster on this machine."""
    # Ray caches a non-empty answer for the life of the process; we need today's.
    find_gcs_addresses.cache_clear()  # type: ignore[attr-defined]
    return bool(find_gcs_addresses())  # type: ignore[no-untyped-call]


def start_local_cluster(num_cpus: int | None = None) -> None:
    """Start a head on this machine with `ray start`, so it outlives this process."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
           "--disable-usage-stats", f"--system-config={json.dumps(health_checks())}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    log.info("starting a local Ray cluster: %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterUnavailable(f"could not start a local Ray cluster:\n{done.stderr[-2000:]}")
    marker = marker_path()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"started_by": "actionmesh", "pid": os.getpid()}))


def stop_local_cluster() -> bool:
    """`ray stop` if `mesh up` started the cluster; True when it did."""
    marker = marker_path()
    if not marker.exists():
        return False
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop"],
                   capture_output=True, check=False)
    marker.unlink(missing_ok=True)
    # `ray stop` can return while the GCS is still exiting; `mesh down` promises it is gone.
    try:
        wait_until(cluster_running, lambda running: not running, STOP_TIMEOUT,
                   "the local Ray cluster to stop", interval=0.1)
    except WaitTimeout as exc:
        log.warning("%s", exc)
    return True


def connect_ray(address: str | None = "auto", start_local: bool = False,
                quiet: bool = False) -> None:
    """Attach this process to a Ray cluster in the mesh's namespace; `quiet`: Ray says
    nothing short of an error (a command's output is its own)."""
    if ray.is_initialized():
        return
    if start_local and (address in (None, "auto")) and not cluster_running():
        start_local_cluster()
    try:
        ray.init(address=address or "auto", namespace=names.NAMESPACE,
                 logging_level=logging.ERROR if quiet else logging.WARNING,
                 log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, RayError) as exc:
        raise ClusterUnavailable(
            f"no Ray cluster at {address!r}: {exc}. Start one with `mesh up` "
            "(it starts a local cluster), or `ray up cluster.yaml`."
        ) from exc


def up(config: MeshConfig | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Create the relay and the scheduler (or find them), and wait for the agents."""
    config = config or MeshConfig()
    # The gateway's token goes to the gateway alone, not to the scheduler and every agent.
    shared = config.model_copy(update={"gateway": None})
    try:
        scheduler = SchedulerActor.options(  # type: ignore[attr-defined]
            **scheduler_options()).remote(shared)
    except RayError as exc:
        raise ClusterUnavailable(f"could not create the mesh actors: {exc}") from exc
    # The scheduler takes the state dir first: the relay must not touch another cluster's.
    try:
        calls.call(scheduler.ping, timeout=timeout)
    except StateDirRefused:
        ray.kill(scheduler, no_restart=True)
        raise
    try:
        relay = LogRelay.options(**relay_options()).remote(shared)  # type: ignore[attr-defined]
    except RayError as exc:
        raise ClusterUnavailable(f"could not create the mesh actors: {exc}") from exc
    calls.call(relay.ping, timeout=timeout)
    if not calls.call(scheduler.ready, timeout, timeout=timeout + 5):
        log.warning("the scheduler has not registered every node's agent yet")
    agents = calls.call(scheduler.pool, timeout=timeout)
    info = {"agents": len(agents), "address": ray.get_runtime_context().gcs_address,
            "grpc_port": None if config.gateway is None else start_gateway(config, timeout)}
    return info


def start_gateway(config: MeshConfig, timeout: float) -> int:
    """Create the gateway (or find it, replacing one started with other settings) and
    return the port it serves on."""
    try:
        running: Any = ray.get_actor(names.GATEWAY, namespace=names.NAMESPACE)
    except ValueError:
        running = None
    if running is not None and calls.call(running.settings, timeout=timeout) != config.gateway:
        log.info("replacing the gateway: its settings changed")
        ray.kill(running, no_restart=True)
        wait_until(_gateway_gone, bool, timeout, "the old gateway gone", interval=0.1)
    try:
        gateway = GatewayActor.options(  # type: ignore[attr-defined]
            **gateway_options()).remote(config)
    except RayError as exc:
        raise ClusterUnavailable(f"could not create the gateway: {exc}") from exc
    try:
        port: int = calls.call(gateway.port, timeout=timeout)
    except MeshError:
        ray.kill(gateway, no_restart=True)  # a gateway that cannot serve must not linger
        raise
    return port


def _gateway_gone() -> bool:
    try:
        ray.get_actor(names.GATEWAY, namespace=names.NAMESPACE)
    except ValueError:
        return True
    return False


def down(stop_cluster: bool = True) -> dict[str, Any]:
    """Stop the agents and the mesh actors; stop the local cluster if `mesh up` started it."""
    stopped_agents: int = 0
    found = False
    for name in (names.GATEWAY, names.SCHEDULER, names.RELAY):
        try:
            actor = ray.get_actor(name, namespace=names.NAMESPACE)
        except ValueError:
            continue
        found = True
        if name == names.SCHEDULER:
            try:
                answer: Any = ray.get(actor.shutdown.remote(), timeout=60)
                stopped_agents = int(answer)
            except Exception as exc:
                log.warning("scheduler shutdown failed: %s", exc)
        ray.kill(actor, no_restart=True)
    stopped_cluster = False
    if stop_cluster:
        ray.shutdown()
        stopped_cluster = stop_local_cluster()
    return {"mesh_found": found, "agents_stopped": stopped_agents,
            "cluster_stopped": stopped_cluster}


def actor_pid(name: str) -> int:
    """The live process of the named mesh actor (Ray's debugging view of its actor table);
    ValueError while it has none (between a death and its restart)."""
    from ray._private import state  # a debugging view: loaded only by whoever asks

    [pid] = [info["Pid"] for info in state.actors(actor_state_name="ALIVE").values()
             if info["Name"] == name]
    return int(pid)


def scheduler_handle() -> Any:
    return _named(names.SCHEDULER)


def relay_handle() -> Any:
    return _named(names.RELAY)


def _named(name: str) -> Any:
    try:
        return ray.get_actor(name, namespace=names.NAMESPACE)
    except ValueError as exc:
        raise MeshNotRunning("the mesh is not running on this cluster; run `mesh up`") from exc
    except RayError as exc:
        raise ClusterUnavailable(str(exc)) from exc
