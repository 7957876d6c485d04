"""One scheduling step: the quota pass, with the placement chain as its gate, then the
backlog pass, and what they decided carried into the ledger as Assign and Stop decisions."""

from __future__ import annotations

from collections.abc import Callable

from mesh import reasons
from mesh.errors import StateCorrupt
from mesh.schema import EPSILON, ActionId, AgentId
from mesh.stages import Stage
from scheduler.core.clock import advance
from scheduler.core.decisions import Decision
from scheduler.core.fleet import Fleet
from scheduler.core.ledger import Ledger
from scheduler.core.lifecycle import Lifecycle
from scheduler.core.placement import Placer, Slot
from scheduler.core.pool import AgentEntry
from scheduler.core.quota.model import QuotaAssignment, Request, TaskRun, Worker
from scheduler.core.quota.run import Gate, fill, run_once
from scheduler.core.quota.scheduler import QuotaScheduler


class Stepper:
    """Runs the passes over the fleet's agents.

    `backlog_turnover`: an agent whose latest attempts each held their place no longer
    than this many seconds is handed, while work still waits after the quota pass, up to
    `backlog_depth` more attempts per CPU ahead of a free slot; it starts each as soon as a
    running one ends, so a short action's slot does not idle for the round trip of its end
    report and the next start. 0: never. Slow turnover keeps the agent out, and work held
    there past the turnover is taken back, so that work does not wait behind a long attempt
    while another agent could take it.
    """

    def __init__(self, fleet: Fleet, placer: Placer, quota: QuotaScheduler, ledger: Ledger,
                 life: Lifecycle, backlog_turnover: float = 0.0,
                 backlog_depth: float = 1.0) -> None:
        self.fleet = fleet
        self.placer = placer
        self.quota = quota
        self.ledger = ledger
        self.life = life
        self.backlog_turnover = backlog_turnover
        self.backlog_depth = backlog_depth
        # The agents that may hold work ahead of a slot, so that a step over a large fleet
        # looks at those alone: the ones the backlog pass handed work to, and those that
        # joined since (their holdings may have held starts). None: every agent, as after
        # a restart, which finds held starts in the holdings.
        self._holding: set[AgentId] | None = None
        # The attempts asked back from their agents, not yet reported withdrawn or running.
        self._asked: set[tuple[ActionId, int]] = set()
        # The agents whose latest attempts each ended within the turnover, as of their last
        # end: only an end changes that. None: not yet looked at.
        self._fast: set[AgentId] | None = None

    def joined(self, agent_id: AgentId) -> None:
        """An agent joined the pool, perhaps holding starts."""
        if self._holding is not None:
            self._holding.add(agent_id)

    def ask_again(self, action_id: ActionId, attempt: int) -> None:
        """A take-back found nothing held (the start may not have arrived yet) or did not
        reach the agent: the next step asks again while the attempt still looks held."""
        self._asked.discard((action_id, attempt))

    def step(self, now: float) -> list[Decision]:
        """One quota pass at `now`: who starts where, at which priority, and who is stopped
        to make room for higher-priority work."""
        advance(self.quota, now)
        if not self.fleet.agents or not (self.quota.queued or self.quota.running):
            return []  # (with only running work, the pass still promotes and demotes)
        decisions: list[Decision] = []
        if self.backlog_turnover > 0:
            # First, so that what is taken back can take a free slot in this same step.
            decisions.extend(self._take_back(now))
        for assignment in run_once(self.quota, self._gate(now), self._takes_work(now)):
            decisions.extend(self._apply(assignment, now))
        if self.backlog_turnover > 0 and self.quota.queued:
            for assignment in self._fill_backlogs(now):
                if self._holding is not None:
                    self._holding.add(assignment.worker_id)
                decisions.extend(self._apply(assignment, now))
        return decisions

    def _fill_backlogs(self, now: float) -> list[QuotaAssignment]:
        """The backlog pass: matching alone, over room lent to the agents whose slots turn
        over fast (their CPUs `backlog_depth` times), in the order the quota pass keeps. It
        runs after the quota pass, so work takes a free slot anywhere before a place in a
        backlog."""
        lent: list[Worker] = []
        try:
            for agent in self._fast_agents():
                worker = self.quota.workers.get(agent.agent_id)
                if worker is not None and self._turns_over(worker, now):
                    lent.append(worker)
                    worker.spare = agent.cpu_capacity * self.backlog_depth
            if not lent:
                return []
            takes = self._takes_work(now)
            return fill(self.quota, self._gate(now), lambda w: w.spare > 0 and takes(w))
        finally:
            for worker in lent:
                worker.spare = 0.0

    def _take_back(self, now: float) -> list[Decision]:
        """Withdraw work still held ahead of a slot that did not free up within the
        turnover: an attempt there proved long, so the work waits again in the queue, for
        the next free slot anywhere (this agent's too), rather than behind it.

        Held work is what an agent reserves beyond its CPUs; the attempts held are, as
        far as the scheduler can tell, the latest it assigned there that have not been
        reported running (an agent reports a start within `running_report_delay`). The
        agent is asked for each (a held-only stop): one that started meanwhile runs on,
        one still held is reported withdrawn and waits in the queue again.
        """
        since = now - self.backlog_turnover
        decisions: list[Decision] = []
        holding: set[AgentId] = set()
        asked: set[tuple[ActionId, int]] = set()
        for agent_id in list(self.fleet.agents if self._holding is None else self._holding):
            agent, worker = self.fleet.agents.get(agent_id), self.quota.workers.get(agent_id)
            if agent is None or worker is None or not agent.info.holds_starts:
                continue
            over = -worker.free_cpus
            if over > EPSILON:
                holding.add(agent_id)
            # Latest first: a worker keeps what it runs in the order it was assigned.
            for action_id in reversed(list(worker.running) if over > EPSILON else []):
                entry = self.ledger.get(action_id)
                if entry.stage is not Stage.ASSIGNED or entry.attempts[-1].assigned_at >= since:
                    continue
                over -= worker.running[action_id].request.cpus
                if entry.cancel_requested:
                    continue  # its stop is on the way already
                key = (entry.id, entry.attempt)
                asked.add(key)
                if key not in self._asked:  # asked once; the agent's answer is a report
                    decisions.append(self.life.withdraw(entry, now))
                if over <= EPSILON:
                    break
        self._holding = holding
        self._asked = asked
        return decisions

    def _fast_agents(self) -> list[AgentEntry]:
        """The agents that can hold starts and whose latest attempts each ended within the
        turnover: those found so before, and those with an end since (a step over a large
        fleet of long attempts looks at neither the fleet nor them)."""
        agents = self.fleet.agents
        if self._fast is None:
            self._fast, looked = set(), set(agents)
        else:
            looked = self._fast | self.life.turned_over
        self.life.turned_over.clear()
        fast = []
        for agent_id in looked:
            agent = agents.get(agent_id)
            if (agent is not None and agent.info.holds_starts
                    and agent.turns_over_within(self.backlog_turnover)):
                self._fast.add(agent_id)
                fast.append(agent)
            else:
                self._fast.discard(agent_id)
        return fast

    def _turns_over(self, worker: Worker, now: float) -> bool:
        """Whether a fast agent's slots still turn over fast: none of the attempts it has now
        is older than the turnover (held work must not wait behind an attempt already known
        to be long)."""
        since = now - self.backlog_turnover
        return all(self.ledger.get(action_id).attempts[-1].assigned_at >= since
                   for action_id in worker.running)

    def _gate(self, now: float) -> Gate:
        """The placement chain as the pass's gate. Memory granted during this pass counts
        against the live sample at once; a preemption's victim gives its own back. An
        agent that turned work away for its load is looked at again after its next
        sample."""
        agents = self.fleet.agents
        granted: dict[AgentId, int] = {}
        # Agents whose live load refuses every CPU request this pass (saturated, or silent
        # too long): asked once, not once per queued request (a deep queue over a busy
        # fleet spent most of each pass building the same refusal).
        no_cpu_work: set[AgentId] = set()
        live = self.placer.live_load

        def admit(worker: Worker, request: Request, freed: TaskRun | None) -> bool:
            agent = agents.get(worker.id)
            if agent is None:
                return False
            takes_cpu = request.cpus > 0 and freed is None
            if takes_cpu and worker.id in no_cpu_work:
                return False
            slot = Slot(agent, worker, freed, granted.get(worker.id, 0))
            rejection = self.placer.first_rejection(slot, request, now)
            if rejection is not None:
                if rejection.check == reasons.CHECK_LOAD:
                    self.fleet.turned_away.add(agent.agent_id)
                    if takes_cpu and not live.takes_cpu_work(agent, now):
                        no_cpu_work.add(worker.id)
                return False
            given_back = freed.request.memory if freed is not None else 0
            granted[worker.id] = slot.granted_memory - given_back + request.memory
            return True

        return admit

    def _takes_work(self, now: float) -> Callable[[Worker], bool]:
        """The pass's question whether a worker asks for work at all, put to the
        placement chain's checks of the agent's own state."""
        agents = self.fleet.agents

        def takes(worker: Worker) -> bool:
            agent = agents.get(worker.id)
            return agent is not None and self.placer.open_to_work(agent, now)
        return takes

    def _apply(self, assignment: QuotaAssignment, now: float) -> list[Decision]:
        entry = self.ledger.get(assignment.request_id)
        agent = self.fleet.agents[assignment.worker_id]
        decisions: list[Decision] = []
        if assignment.kind == "preempt":
            victim = self.ledger.get(assignment.task_to_abort)
            decisions.append(self.life.preempt(victim, entry, assignment.priority, now))
        try:
            entry.spec  # noqa: B018 (a restored spec is parsed when it is first needed)
        except StateCorrupt as exc:  # a damaged row must cost its action, not the scheduler
            self.life.finish(entry, Stage.FAILED, now,
                             reasons.SPEC_UNREADABLE.format(error=_first_line(exc)))
            return decisions
        decisions.append(self.life.assign(entry, agent, assignment.priority, now))
        return decisions


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else repr(exc)
