"""Latency: submit -> running and submit -> result for one `true` on an idle pool, each way
a client can ask: submit then result, `run`, and `run` with every call over Ray."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import ray

from bench.harness import local_mesh, median, pct
from mesh import Action, ActionStatus, Stage
from mesh.client import Client
from mesh.clientlink import ClientLink

N = 500


@ray.remote(num_cpus=0)
class Echo:
    def ping(self) -> int:
        return 1


def actor_round_trips() -> list[float]:
    echo = Echo.remote()  # type: ignore[attr-defined]
    ray.get(echo.ping.remote())
    samples = []
    for _ in range(N):
        start = time.perf_counter()
        ray.get(echo.ping.remote())
        samples.append(time.perf_counter() - start)
    return samples


def two_calls(client: Client) -> ActionStatus:
    return client.submit(Action(command=["true"])).result(timeout=30)


def one_call(client: Client) -> ActionStatus:
    return client.run(Action(command=["true"]), timeout=30)


WAYS: dict[str, Callable[[Client], ActionStatus]] = {"submit, then result": two_calls,
                                                      "run": one_call,
                                                      "run, over Ray": one_call}
# Ways taken by a client whose link is never granted: each call a Ray call, as before the
# client link (mesh/v1/client.proto).
OVER_RAY = {"run, over Ray"}


def over_ray() -> Client:
    client = Client()
    client.link = ClientLink(lambda: None)
    return client


def mesh_latencies(client: Client, n: int = N, ways: Sequence[str] = tuple(WAYS),
                   ) -> dict[str, tuple[list[float], list[float]]]:
    """Submit -> running and submit -> result of `n` actions each way, the ways taking
    turns so that a slow spell of this shared machine falls on all."""
    found: dict[str, tuple[list[float], list[float]]] = {w: ([], []) for w in ways}
    ray_only = over_ray() if OVER_RAY.intersection(ways) else client
    for _ in range(n):
        for name in ways:
            to_running, to_result = found[name]
            start = time.perf_counter()
            status = WAYS[name](ray_only if name in OVER_RAY else client)
            to_result.append(time.perf_counter() - start)
            assert status.stage is Stage.SUCCEEDED, status
            record = status.attempts[-1]
            assert record.started_at is not None
            to_running.append(record.started_at - status.submitted_at)
    return found


def main() -> None:
    with local_mesh(num_cpus=2) as client:
        for _ in range(20):
            client.submit(Action(command=["true"])).result(timeout=30)  # warm up
        rtt = actor_round_trips()
        found = mesh_latencies(client)
    ms = 1000.0
    print(f"plain actor round trip: p50 {median(rtt) * ms:.2f} ms, p99 {pct(rtt, 99) * ms:.2f} ms")
    for name, (running, result) in found.items():
        print(f"{name}: submit -> running (scheduler clock): p50 {median(running) * ms:.2f} ms, "
              f"p99 {pct(running, 99) * ms:.2f} ms")
        print(f"{name}: submit -> result (client clock): p50 {median(result) * ms:.2f} ms, "
              f"p99 {pct(result, 99) * ms:.2f} ms; target p50 <= 6 ms")
        print(f"{name}: submit -> result p50 / actor round trip p50 = "
              f"{median(result) / median(rtt):.1f}")


if __name__ == "__main__":
    main()
