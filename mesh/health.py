"""How healthy the mesh is, from what its parts say: one verdict and the reasons for it."""

from __future__ import annotations

from collections import Counter

from mesh.schema import AgentStatus, Health, MeshHealth

# `mesh health`'s exit code for each verdict.
EXIT_CODES = {"healthy": 0, "degraded": 1, "down": 2}


def judge(scheduler: Health | None, relay: bool, agents: list[AgentStatus],
          unreachable: str = "") -> MeshHealth:
    """Down when the scheduler does not answer or does not serve yet; degraded when it
    serves but something would lose or delay work (a store it cannot write, no relay for
    output, an agent suspect or none alive, agents off the stream); else healthy."""
    states = Counter(a.state for a in agents)
    by_ray = sum(1 for a in agents if a.link == "ray") \
        if scheduler is not None and scheduler.link != "ray" else 0
    found = MeshHealth(verdict="healthy", scheduler=scheduler, relay=relay,
                       agents=dict(states), agents_by_ray=by_ray)
    if scheduler is None:
        return found.model_copy(update={
            "verdict": "down", "problems": [unreachable or "the scheduler does not answer"]})
    if not scheduler.serving:
        return found.model_copy(update={"verdict": "down", "problems": [
            "the scheduler is starting: loading its state and asking the agents what they run"]})
    problems = []
    if scheduler.store != "ok":
        problems.append(f"the state store is {scheduler.store} ({scheduler.reason}): "
                        "submissions are refused")
    if not relay:
        problems.append("the log relay does not answer: output is not kept")
    if not states["alive"]:
        drained = states["draining"] + states["drained"]
        problems.append(f"no agent takes new work: {drained} drained" if drained
                        else "no agent is alive: nothing can run")
    if states["suspect"]:
        problems.append(f"{states['suspect']} agent(s) suspect: not answering, given no work")
    if scheduler.link == "down":
        problems.append("the agents' stream server is not serving: agents report by Ray calls")
    elif by_ray:
        problems.append(f"{by_ray} agent(s) report by Ray calls, not their stream")
    if problems:
        return found.model_copy(update={"verdict": "degraded", "problems": problems})
    return found
