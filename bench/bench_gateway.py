"""The gRPC gateway against the Python client, in one run: actions per second (each action
submitted and followed, many at once) and log lines per second (one action's 1,000,000
lines followed to the end).

A gateway stream tells its client every stage change and then the final status; the
Python client's like of it follows `events()` and then reads the status. Its cheapest
way to learn only the end, `result()`, is measured too, and reported beside."""

from __future__ import annotations

import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from bench.bench_logs import LINES, WIDTH
from bench.bench_logs import mesh_rate as client_log_rate
from bench.harness import local_mesh, report
from mesh import Action, names
from mesh.client import Client
from mesh.grpcclient import GatewayClient
from mesh.schema import GatewayConfig, MeshConfig
from mesh.v1 import gateway_pb2 as gpb
from mesh.v1 import link_pb2 as pb

ACTIONS = 600
STREAMS = 32
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))


def rate(follow_one: Callable[[int], bool]) -> float:
    """Actions per second with STREAMS of them followed at once, each to its result."""
    start = time.perf_counter()
    with ThreadPoolExecutor(STREAMS) as pool:
        done = list(pool.map(follow_one, range(ACTIONS)))
    elapsed = time.perf_counter() - start
    assert all(done), f"{done.count(False)} actions did not succeed"
    return ACTIONS / elapsed


def client_result(client: Client) -> Callable[[int], bool]:
    def one(_: int) -> bool:
        return client.submit(Action(command=["true"])).result(timeout=120).ok
    return one


def client_follow(client: Client) -> Callable[[int], bool]:
    def one(_: int) -> bool:
        handle = client.submit(Action(command=["true"]))
        stages = [event.stage for event in handle.events(follow=True)]
        return bool(stages) and handle.status().ok
    return one


def gateway_follow(gateway: GatewayClient) -> Callable[[int], bool]:
    def one(_: int) -> bool:
        # Without output, as neither Python client reads any.
        *changes, last = gateway.submit(pb.Action(command=["true"]), without_logs=True,
                                        timeout=120)
        return bool(changes) and last.result.stage == gpb.STAGE_SUCCEEDED
    return one


def gateway_log_rate(gateway: GatewayClient) -> float:
    script = (f"import sys\nline = 'x' * {WIDTH} + '\\n'\n"
              f"sys.stdout.write(line * {LINES})\n")
    start = time.perf_counter()
    got = 0
    result = None
    for event in gateway.submit(pb.Action(command=[sys.executable, "-c", script]), timeout=600):
        if event.HasField("log"):
            # The same work per line as the Python client's follower: look at each.
            for line in event.log.lines:
                got += 1
                assert len(line) == WIDTH
        elif event.HasField("result"):
            result = event.result
    elapsed = time.perf_counter() - start
    assert got == LINES, f"{got} lines arrived of {LINES}"
    assert result is not None and result.stage == gpb.STAGE_SUCCEEDED
    return LINES / elapsed


def main() -> None:
    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="meshbench-") as state:
        config = MeshConfig(state_dir=state, gateway=GatewayConfig(
            port=0, host="127.0.0.1", token=token))  # type: ignore[arg-type]
        with local_mesh(num_cpus=2, config=config) as client:
            gateway_actor: Any = ray.get_actor(names.GATEWAY)
            port: int = ray.get(gateway_actor.port.remote())
            with GatewayClient(f"127.0.0.1:{port}", token) as gateway:
                paths = {"gateway": gateway_follow(gateway), "client": client_follow(client),
                         "result": client_result(client)}
                for follow in paths.values():
                    for i in range(20):
                        follow(i)  # warm up every path
                rates: dict[str, list[float]] = {name: [] for name in paths}
                lines: dict[str, list[float]] = {"gateway": [], "client": []}
                # Rounds alternate, so a slow spell of this shared machine falls on all.
                for _ in range(ROUNDS):
                    for name, follow in paths.items():
                        rates[name].append(rate(follow))
                    lines["client"].append(client_log_rate(client))
                    lines["gateway"].append(gateway_log_rate(gateway))
    for what, ours, theirs in (("actions", rates["gateway"], rates["client"]),
                               ("actions against result()", rates["gateway"], rates["result"]),
                               ("lines", lines["gateway"], lines["client"])):
        rounds = ", ".join(f"{x / y:.2f}" for x, y in zip(ours, theirs, strict=True))
        print(f"{what} per round (gateway / Python client): {rounds}")
    median = statistics.median
    report(f"gateway actions ({ACTIONS} x `true`, {STREAMS} followed at once, every stage "
           f"change and the status; median of {ROUNDS} rounds)", median(rates["gateway"]),
           median(rates["client"]), "actions/s", ">= 0.7")
    report("the same against the Python client's result() alone", median(rates["gateway"]),
           median(rates["result"]), "actions/s", "reported")
    report(f"gateway log lines ({LINES:,} of {WIDTH} characters, median of {ROUNDS} rounds)",
           median(lines["gateway"]), median(lines["client"]), "lines/s", ">= 0.7")


if __name__ == "__main__":
    main()
