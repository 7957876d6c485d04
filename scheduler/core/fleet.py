"""The pool's agents as the core keeps them: joining and leaving, drains, load samples, the
terms of their groups, and their status."""

from __future__ import annotations

from mesh import reasons
from mesh.errors import Conflict, NotFound
from mesh.protocol import AgentHoldings
from mesh.schema import AgentId, AgentInfo, AgentStatus, Load, MeshEvent, RunningAttempt
from scheduler.core.clock import advance
from scheduler.core.decisions import Decision
from scheduler.core.groups import Groups
from scheduler.core.judging import Judge
from scheduler.core.ledger import Ledger
from scheduler.core.lifecycle import Lifecycle
from scheduler.core.placement import Placer
from scheduler.core.pool import AgentEntry
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.reconcile import Reconciler

# Memory freed on an agent that is worth another placement pass (or 1% of the machine).
MEMORY_STEP = 64 * 2**20


class Fleet:
    """The registered agents (`agents`, shared with the rest of the core), the drains an
    operator set, and the agents whose live load turned work away."""

    def __init__(self, agents: dict[AgentId, AgentEntry], groups: Groups, placer: Placer,
                 quota: QuotaScheduler, ledger: Ledger, life: Lifecycle,
                 judge: Judge) -> None:
        self.agents = agents
        self.groups = groups
        self.placer = placer
        self.quota = quota
        self.ledger = ledger
        self.life = life
        self.judge = judge
        self.reconciler = Reconciler(life)
        # Agents an operator drained, present or not (one that comes back stays drained),
        # and whether that changed since the last write.
        self.drained: set[AgentId] = set()
        self._drains_changed = False
        # Agents whose live load turned work away: their next sample may let it in.
        self.turned_away: set[AgentId] = set()

    # ---- the drains, written with the core's other changes --------------------------------

    def take_drains(self) -> set[AgentId] | None:
        """The drains to write, if they changed since the last write."""
        if not self._drains_changed:
            return None
        self._drains_changed = False
        return set(self.drained)

    def give_back_drains(self, taken: set[AgentId] | None) -> None:
        """A write of `take_drains`'s answer failed: write them next time."""
        self._drains_changed = self._drains_changed or taken is not None

    def forget_drained(self, alive_nodes: set[str]) -> bool:
        """Forget the drains of agents whose node is no longer alive: an agent's id is its
        node's, which Ray never gives out again. True when some were forgotten."""
        gone = {a for a in self.drained if a not in alive_nodes}
        self.drained -= gone
        self._drains_changed = self._drains_changed or bool(gone)
        return bool(gone)

    # ---- joining and leaving ---------------------------------------------------------------

    def joined(self, info: AgentInfo, now: float, held: AgentHoldings | None = None,
               ) -> list[Decision]:
        """Add (or refresh) the agent, and square what it says it runs with the ledger."""
        advance(self.quota, now)
        # Joining a pool that had agents only adds ways to run: it can clear verdicts of
        # unplaceable, never make new ones. The first agent can make new ones.
        only_clears = bool(self.agents)
        entry = self.agents.get(info.agent_id)
        if entry is None:
            entry = AgentEntry(info=info, terms=self.groups.terms(info),
                               drained=info.agent_id in self.drained)
            self.agents[info.agent_id] = entry
            reason = reasons.AGENT_JOINED.format(
                host=info.hostname, cpus=info.cpus, memory_gib=info.memory / 2**30,
                labels=", ".join(info.labels))
        else:
            entry.info = info
            entry.terms = self.groups.terms(info)
            entry.state = "alive"
            reason = reasons.AGENT_REJOINED.format(host=info.hostname)
        self.ledger.note(MeshEvent(time=now, kind="agent_joined", agent_id=info.agent_id,
                                   reason=reason))
        self._mark_idle(entry, now)
        self.judge.queue(now, only_clears)
        return self.reconciler.agent_holds(info.agent_id, held or AgentHoldings(), now)

    def left(self, agent_id: AgentId, now: float, reason: str = "",
             counted: bool = True) -> None:
        """The agent is gone (`reason`: why): its attempts are lost and their actions go
        back to the queue; `counted` against their loss budgets and as deaths (not when the
        mesh itself stopped the agent)."""
        if self.agents.pop(agent_id, None) is None:
            return
        self.life.turned_over.discard(agent_id)
        self.ledger.note(MeshEvent(time=now, kind="agent_left", agent_id=agent_id,
                                   reason=reason))
        advance(self.quota, now)
        for action_id in self.quota.forget_worker(agent_id, now):
            self.life.lose(self.ledger.get(action_id), now, died=counted, counted=counted)
        self.judge.queue(now, only_clears=False)

    def suspect(self, agent_id: AgentId, now: float) -> None:
        entry = self.agents.get(agent_id)
        if entry is not None and entry.state == "alive":
            entry.state = "suspect"
            self.ledger.note(MeshEvent(time=now, kind="agent_suspect", agent_id=agent_id,
                                       reason=reasons.AGENT_SUSPECT))

    def wanted(self, wanted: set[AgentId], now: float) -> set[AgentId]:
        """After a restart: attempts saved in flight on any other agent went with it while
        the scheduler was away. Returns those agents."""
        gone = {e.agent_id for e in self.reconciler.unclaimed()
                if e.agent_id is not None and e.agent_id not in wanted}
        self.reconciler.lose_on(gone, now)
        return gone

    def _mark_idle(self, agent: AgentEntry, now: float) -> None:
        """Tell the quota scheduler about the agent, as upstream's bots ask for work."""
        worker = self.quota.workers.get(agent.agent_id)
        if worker is not None and not worker.idle:
            return  # it knows the agent and what runs there; nothing to refresh
        self.quota.mark_idle(agent.agent_id, agent.labels, now, cpus=agent.cpu_capacity,
                             memory=int(agent.memory_capacity))

    # ---- an operator's drains and groups ---------------------------------------------------

    def find(self, name: str) -> AgentId:
        """The agent `name` names: its id, or the hostname `mesh agents` shows (NotFound,
        or Conflict when several agents share that hostname)."""
        if name in self.agents:
            return AgentId(name)
        on_host = sorted(a for a, e in self.agents.items() if e.info.hostname == name)
        if len(on_host) > 1:
            raise Conflict(f"{len(on_host)} agents run on host {name!r} "
                           f"({', '.join(on_host)}): name one by its id")
        if not on_host:
            raise NotFound(f"no agent with id or hostname {name!r}")
        return on_host[0]

    def drain(self, name: str, now: float, drained: bool = True) -> AgentStatus:
        """Give the agent no new work (its running work finishes), or, with `drained`
        false, open it again."""
        agent_id = self.find(name)
        entry = self.agents[agent_id]
        if entry.drained != drained:
            entry.drained = drained
            (self.drained.add if drained else self.drained.discard)(agent_id)
            self._drains_changed = True
            self.ledger.note(MeshEvent(time=now, agent_id=agent_id, reason=entry.info.hostname,
                                       kind="agent_drained" if drained else "agent_undrained"))
            if not drained:
                self.quota.touch_worker(agent_id)  # requests it turned down may run now
        return self.status(agent_id, now)

    def reshape(self) -> None:
        """After the groups changed: each agent takes its group's terms. One whose terms
        changed (its labels, size, or block) is looked at again by the next pass for all
        that waits, as an undrained one is: a pass examines work without it while closed."""
        for agent in self.agents.values():
            terms = self.groups.terms(agent.info)
            if terms == agent.terms:
                continue
            agent.terms = terms
            self.quota.reshape_worker(agent.agent_id, agent.labels, agent.cpu_capacity,
                                      int(agent.memory_capacity))
            self.quota.touch_worker(agent.agent_id)

    def open_cpus(self, now: float) -> dict[str, float]:
        """Per group, the CPUs its agents open to work may reserve."""
        weights = {group: 0.0 for group in self.groups.names()}
        for agent in self.agents.values():
            if self.placer.open_to_work(agent, now):
                weights[agent.group] += agent.cpu_capacity
        return weights

    # ---- load ----------------------------------------------------------------------------

    def load(self, agent_id: AgentId, load: Load, now: float) -> bool:
        """Record a load sample. True when it may let waiting work onto the agent (it was
        suspect, stale or saturated and is not now, or it has notably more memory free),
        so placement is re-run on samples that can change its answer and not on every one.
        """
        entry = self.agents.get(agent_id)
        if entry is None:
            return False
        advance(self.quota, now)
        live = self.placer.live_load
        was_blocked = entry.state == "suspect" or not live.takes_cpu_work(entry, now)
        before = entry.load.memory_available if entry.load is not None else 0
        entry.take_load(load, now)
        if entry.state == "suspect":
            entry.state = "alive"
            self.ledger.note(MeshEvent(time=now, kind="agent_back", agent_id=agent_id,
                                       reason=reasons.AGENT_BACK))
        if agent_id in self.quota.workers:
            self.quota.confirm_worker(agent_id, now)
        else:
            self._mark_idle(entry, now)  # expired while idle and silent: back in the pool
        grew = load.memory_available - before >= max(MEMORY_STEP, load.memory_total // 100)
        more_room = (was_blocked and live.takes_cpu_work(entry, now)) or grew
        if agent_id in self.turned_away:
            self.turned_away.discard(agent_id)
            more_room = True
        if more_room:
            self.quota.touch_worker(agent_id)  # requests it turned down may fit now
        return more_room and bool(self.quota.queued)

    # ---- status --------------------------------------------------------------------------

    def statuses(self, now: float) -> list[AgentStatus]:
        return [self.status(agent_id, now) for agent_id in sorted(self.agents)]

    def status(self, agent_id: AgentId, now: float) -> AgentStatus:
        agent = self.agents[agent_id]
        worker = self.quota.workers.get(agent_id)
        running = []
        for request_id, run in sorted(worker.running.items()) if worker else ():
            entry = self.ledger.get(request_id)
            running.append(RunningAttempt(
                action_id=entry.id, attempt=entry.attempt, stage=entry.stage,
                cpus=run.request.cpus, memory=run.request.memory))
        return AgentStatus(
            info=agent.info, state=agent.shown_state(len(running)), group=agent.group,
            capacity_percent=agent.capacity_percent,
            load=agent.load, load_age=agent.load_age(now),
            reserved_cpus=sum(r.cpus for r in running),
            reserved_memory=sum(r.memory for r in running), running=running)
