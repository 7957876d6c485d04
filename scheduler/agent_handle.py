"""Every Ray call the scheduler makes to an agent, behind one small injectable handle."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agent.actor import AgentActor
from mesh import names
from mesh.protocol import AgentHoldings, Assignment, LinkGrant
from mesh.schema import AgentInfo, MeshConfig

# Set in the agent's process before anything in it loads grpc. gRPC's fork handlers, on by
# default, run in every child forked to switch users (those cannot use vfork) while the
# link's threads run, and broke about one such spawn in four: a segfault or gRPC's log
# lines in the action's output.
AGENT_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "false"}
# How long an agent may take to take its link grant.
LINK_TIMEOUT = 30.0


class AgentGone(Exception):
    """The agent actor is dead: its attempts are lost."""


class AgentUnreachable(Exception):
    """The agent did not answer; it may be dead or only slow (suspect, not lost)."""


class AgentHandle(Protocol):
    async def hello(self, timeout: float) -> AgentInfo: ...
    def start(self, assignment: Assignment) -> Any: ...
    def stop(self, action_id: str, attempt: int, reason: str = "", held_only: bool = False,
             ) -> Any: ...
    async def holdings(self, timeout: float) -> AgentHoldings: ...
    async def link(self, grant: LinkGrant) -> None: ...
    async def wait_closed(self) -> None: ...
    async def shutdown(self, timeout: float) -> None: ...


async def _await(ref: Any, timeout: float | None = None) -> Any:
    """Await a Ray call, translating actor failures into AgentGone / AgentUnreachable."""
    try:
        return await asyncio.wait_for(ref, timeout)
    except ActorUnavailableError as exc:
        raise AgentUnreachable(str(exc)) from exc
    except (ActorDiedError, RayActorError) as exc:
        raise AgentGone(str(exc)) from exc
    except TimeoutError as exc:
        raise AgentUnreachable("no answer in time") from exc


class RayAgentHandle:
    """Wraps one agent actor handle. `start` and `stop` return awaitables at once, so calls
    made in order reach the agent in order.

    Made, it asks the agent at once who it is and what it holds; the first `hello` and
    `holdings` take those answers. A restarting scheduler makes its handles before it reads
    its saved state, so the answers travel while it reads.
    """

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self._asked: dict[str, Any] = {"hello": actor.hello.remote(),
                                       "holdings": actor.holdings.remote()}

    def _call(self, method: str) -> Any:
        ref = self._asked.pop(method, None)
        return getattr(self.actor, method).remote() if ref is None else ref

    async def hello(self, timeout: float) -> AgentInfo:
        info: AgentInfo = await _await(self._call("hello"), timeout)
        return info

    def start(self, assignment: Assignment) -> Any:
        return _await(self.actor.start.remote(assignment))

    def stop(self, action_id: str, attempt: int, reason: str = "", held_only: bool = False,
             ) -> Any:
        return _await(self.actor.cancel.remote(action_id, attempt, reason, held_only))

    async def holdings(self, timeout: float) -> AgentHoldings:
        held: AgentHoldings = await _await(self._call("holdings"), timeout)
        return held

    async def link(self, grant: LinkGrant) -> None:
        await _await(self.actor.link.remote(grant), LINK_TIMEOUT)

    async def wait_closed(self) -> None:
        await _await(self.actor.wait_closed.remote())

    async def shutdown(self, timeout: float) -> None:
        try:
            await _await(self.actor.shutdown.remote(), timeout)
        finally:
            ray.kill(self.actor, no_restart=True)


def make_agent_handle(node_id: str, config: MeshConfig) -> AgentHandle:
    """Create (or find, after a scheduler restart) the detached agent pinned to the node."""
    actor = AgentActor.options(  # type: ignore[attr-defined]
        name=names.agent_name(node_id), namespace=names.NAMESPACE, lifetime="detached",
        get_if_exists=True, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        runtime_env={"env_vars": AGENT_ENV},
    ).remote(node_id, config)
    return RayAgentHandle(actor)
