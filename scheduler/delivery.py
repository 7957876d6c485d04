"""Carrying out the core's decisions: written first, then sent to their agents, down the
agent's stream when it has one open or by Ray call, and what becomes of each call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from mesh import reasons
from mesh.protocol import Assignment, CancelOutcome
from mesh.schema import AgentId
from scheduler.agent_handle import AgentGone, AgentHandle, AgentUnreachable
from scheduler.core.decisions import Assign, Decision, Stop
from scheduler.core.state import SchedulerState
from scheduler.durable import Writer
from scheduler.link import LinkServer

log = logging.getLogger("actionmesh.scheduler")
# Seconds before a start or stop whose call found its agent unreachable goes again, doubling.
RESEND_FIRST = 1.0
RESEND_MAX = 30.0

# Drops an agent whose actor a call found dead (only if `handle` is still the one registered).
Gone = Callable[[AgentId, str, AgentHandle], None]


class Delivery:
    """Sends decisions to the registered agents (`handles`, the shell's own)."""

    def __init__(self, core: SchedulerState, writer: Writer, link: LinkServer,
                 handles: dict[AgentId, AgentHandle], clock: Callable[[], float],
                 kick: Callable[[], None],
                 spawn: Callable[[Coroutine[Any, Any, Any]], Any], on_gone: Gone) -> None:
        self.core = core
        self.writer = writer
        self.link = link
        self.handles = handles
        self.clock = clock
        self.kick = kick
        self.spawn = spawn
        self.on_gone = on_gone

    def carry_out(self, decisions: list[Decision]) -> bool:
        """Write the state, then act: an assignment is written before its agent hears of
        it, so a restarted scheduler never meets an attempt it did not know it made.
        False (and nothing sent) when the write failed.

        Starts and stops go down the agent's stream when it has one open (one message
        per agent, no Ray call), else by Ray call.
        """
        if not self.writer.write():
            self.writer.hold(decisions)
            return False
        starts: dict[AgentId, list[Assign]] = {}
        for decision in decisions:
            if decision.agent_id not in self.handles:
                if isinstance(decision, Assign):
                    self._start_failed(decision, reasons.AGENT_LEFT)
            elif isinstance(decision, Assign):
                starts.setdefault(decision.agent_id, []).append(decision)
            elif not self.link.stop(decision):
                self._call(decision)
        for agent_id, assigns in starts.items():
            unsent = {(a.action_id, a.attempt) for a in self.link.push(
                agent_id, [self.core.assignment(a) for a in assigns])}
            for assign in assigns:
                if (assign.action_id, assign.attempt) in unsent:
                    self._call(assign)
        return True

    def _call(self, decision: Decision, resend_in: float = RESEND_FIRST) -> None:
        """Carry out one decision by a Ray call to its agent, and follow the call."""
        handle = self.handles[decision.agent_id]
        try:
            if isinstance(decision, Assign):
                call = handle.start(self.core.assignment(decision))
            else:
                call = handle.stop(decision.action_id, decision.attempt, decision.reason,
                                   decision.held_only)
        except Exception as exc:  # submitting the call itself failed (serialisation)
            log.exception("could not send %s", decision)
            if isinstance(decision, Assign):
                self._start_failed(decision, reasons.START_NOT_SENT.format(error=exc))
            return
        self.spawn(self._follow_call(decision, handle, call, resend_in))

    def _start_failed(self, decision: Assign, why: str) -> None:
        self.core.start_failed(decision.action_id, decision.attempt, self.clock(), why)
        self.writer.write()
        self.kick()

    async def _follow_call(self, decision: Decision, handle: AgentHandle, call: Any,
                           resend_in: float) -> None:
        try:
            found = await call
            if isinstance(decision, Stop):
                self.stopped(decision, found)
        except AgentGone:
            self.on_gone(decision.agent_id, reasons.CALL_FAILED, handle)
        except AgentUnreachable:
            self.core.agent_suspect(decision.agent_id, self.clock())
            if isinstance(decision, Stop) and decision.held_only:
                self.core.take_back_unanswered(decision.action_id, decision.attempt)
                return
            # It may or may not have reached the agent, which ignores a start or stop it
            # has seen: sent again until answered, or a start stuck in assigned, or a
            # cancel or preemption lost while the attempt runs on.
            await asyncio.sleep(resend_in)
            self._resend(decision, handle, min(resend_in * 2, RESEND_MAX))
        except Exception as exc:
            log.error("agent %s refused %s: %s", decision.agent_id, decision, exc)
            if isinstance(decision, Assign):
                self._start_failed(decision, reasons.START_REFUSED.format(error=exc))

    def _resend(self, decision: Decision, handle: AgentHandle, resend_in: float) -> None:
        """Send a decision again, down the agent's stream if one is open now, while the
        agent is the one registered (one registered anew squared its holdings then) and,
        for a start, while the attempt still waits for it."""
        if self.handles.get(decision.agent_id) is not handle:
            return
        if isinstance(decision, Assign):
            if not self.core.awaits_start(decision.action_id, decision.attempt) \
                    or not self.link.push(decision.agent_id, [self.core.assignment(decision)]):
                return
        elif self.link.stop(decision):
            return
        self._call(decision, resend_in)

    def otherwise(self, assignments: list[Assignment], stops: list[Stop]) -> None:
        """Ray calls for what a lost stream may not have delivered: starts still waiting for
        their start (a cancelled or ended one must not run again), and stops with no
        outcome back."""
        now = self.clock()
        still = [a for a in assignments if self.core.awaits_start(a.action_id, a.attempt)]
        self.carry_out([Assign(a.action_id, a.attempt, a.agent_id, now) for a in still])
        for stop in stops:
            if stop.agent_id in self.handles:
                self._call(stop)

    def stopped(self, stop: Stop, outcome: CancelOutcome) -> None:
        """An agent's outcome of a stop. A held-only stop's start, when the agent held it,
        comes back as a `withdrawn` report; when it did not (it started, or has not
        arrived yet), the take-back is asked again while the attempt still looks held."""
        if stop.held_only:
            if outcome == "unknown":
                self.core.take_back_unanswered(stop.action_id, stop.attempt)
        elif outcome == "unknown":
            self.core.stop_found_nothing(stop.action_id, stop.attempt, self.clock())
            self.writer.write()
