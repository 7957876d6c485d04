"""The gRPC gateway against the Python client, in one run: actions per second (each action
submitted and followed to its result, many at once) and log lines per second (one action's
1,000,000 lines followed to the end)."""

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


def client_action(client: Client) -> Callable[[int], bool]:
    def one(_: int) -> bool:
        return client.submit(Action(command=["true"])).result(timeout=120).ok
    return one


def gateway_action(gateway: GatewayClient) -> Callable[[int], bool]:
    def one(n: int) -> bool:
        # Without output, as the Python client's result() reads none.
        *_earlier, last = gateway.submit(pb.Action(command=["true"]), without_logs=True,
                                  timeout=120)
        return last.result.stage == gpb.STAGE_SUCCEEDED
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
                for follow in (client_action(client), gateway_action(gateway)):
                    for i in range(20):
                        follow(i)  # warm up both paths
                ours: list[float] = []
                theirs: list[float] = []
                our_lines: list[float] = []
                their_lines: list[float] = []
                # Rounds alternate, so a slow spell of this shared machine falls on both.
                for _ in range(ROUNDS):
                    theirs.append(rate(client_action(client)))
                    ours.append(rate(gateway_action(gateway)))
                    their_lines.append(client_log_rate(client))
                    our_lines.append(gateway_log_rate(gateway))
    for name, a, b in (("actions", ours, theirs), ("lines", our_lines, their_lines)):
        rounds = ", ".join(f"{x / y:.2f}" for x, y in zip(a, b, strict=True))
        print(f"{name} per round (gateway / Python client): {rounds}")
    report(f"gateway actions ({ACTIONS} x `true`, {STREAMS} followed at once, median of "
           f"{ROUNDS} rounds)", statistics.median(ours), statistics.median(theirs),
           "actions/s", ">= 0.7")
    report(f"gateway log lines ({LINES:,} of {WIDTH} characters, median of {ROUNDS} rounds)",
           statistics.median(our_lines), statistics.median(their_lines), "lines/s", ">= 0.7")


if __name__ == "__main__":
    main()
