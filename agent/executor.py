"""Running attempts on this machine: spawn, watch, time out, cancel, report (asyncio, no Ray).

Each attempt runs in a process group of its own, so a cancel or timeout reaches its whole
tree: SIGTERM to the group, `kill_grace` seconds, then SIGKILL. Where the machine offers
control groups, it also runs in one of its own, which holds even the processes that leave
its process group and clear their environment, and limits its memory and process count;
a kill then kills the control group too. The group is registered with the agent's reaper,
which kills it (and the agent's control groups) if the agent dies first. When the main process
ends, whatever it left behind in its group is killed too, the output is drained and
pushed, the log is closed, and only then does the end report go out, so a controller that
sees the result can read the complete log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent import cgroups, procscan
from agent.cgroups import AttemptGroup, Cgroups
from agent.child import ChildProcess
from agent.ended import REMEMBER_FINISHED, Ended, Key
from agent.launch import Launcher
from agent.logship import LogShipper
from agent.outcome import Outcome, outcome
from agent.programs import argv, spawn_failure
from agent.reaper import ReaperHandle
from agent.runas import RunAs
from agent.sinks import LogSink, ReportSink
from agent.spawner import SpawnerGone
from agent.workspace import ENV_WORKSPACE, Workspaces, base_environment, workspace_root
from mesh.names import ENV_ACTION, ENV_AGENT, ENV_ATTEMPT
from mesh.protocol import (
    AgentHoldings,
    Assignment,
    AttemptReport,
    CancelOutcome,
    HeldAttempt,
    NotRun,
    ReportStage,
)
from mesh.schema import ActionId, AgentId, MeshConfig

log = logging.getLogger(__name__)

# After the main process has gone and its group has been killed, the pipes normally close
# at once. If no byte arrives for this long while one stays open, a process that left the
# group holds it: it is hunted down by its environment, then the pipe is closed regardless.
DRAIN_QUIET = 1.0
# Log pushes in flight per attempt before its pipes stop being read.
MAX_PUSHES_IN_FLIGHT = 8


@dataclass(eq=False)
class _Attempt:
    assignment: Assignment
    shipper: LogShipper
    child: ChildProcess
    pgid: int = 0
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: tuple[ReportStage, str] | None = None
    send_end_report: bool = True
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    running_timer: asyncio.TimerHandle | None = None
    workspace: Path | None = None
    group: AttemptGroup | None = None

    @property
    def key(self) -> Key:
        return (self.assignment.action_id, self.assignment.attempt)

    @property
    def marks(self) -> dict[str, str]:
        return {ENV_ACTION: self.assignment.action_id, ENV_ATTEMPT: str(self.assignment.attempt)}

    def request_stop(self, stage: ReportStage, reason: str, report: bool = True) -> None:
        # The first stop wins: a timeout that lands during a cancel stays a cancel.
        if self.stop_reason is None:
            self.stop_reason = (stage, reason)
        self.send_end_report = self.send_end_report and report
        self.stop_requested.set()


class Executor:
    """Runs this agent's attempts and reports on them through the injected sinks."""

    def __init__(
        self,
        agent_id: AgentId,
        token: str,
        config: MeshConfig,
        reports: ReportSink,
        logs: LogSink,
        clock: Callable[[], float] = time.time,
        remember: int = REMEMBER_FINISHED,
    ) -> None:
        self.agent_id = agent_id
        self.token = token
        self.config = config
        self.reports = reports
        self.logs = logs
        self.clock = clock
        self._attempts: dict[Key, _Attempt] = {}
        # Built once: the agent's environment does not change, and none of it but a few
        # harmless names reaches an attempt (it holds Ray's and the mesh's secrets).
        # Who attempts run as: the agent's user until `prepare` finds config.run_as usable.
        self.user = RunAs.agent()
        self._base_env = base_environment(os.environ, self.user)
        # One root per agent: agents of several Ray nodes may share a machine, and each
        # clears what its predecessor left in its own.
        self.workspaces = Workspaces(workspace_root(config.workspace_dir) / agent_id,
                                     config.keep_workspaces)
        # Set by `prepare` when no attempt can start here: each start then fails with it.
        self._refusal = ""
        # Found by `prepare`: None where the machine offers none (or config.cgroups is off).
        self.cgroups: Cgroups | None = None
        self._prepared: asyncio.Task[None] | None = None
        self._warned_memory = False
        self._ended = Ended(remember)
        self._reaper: ReaperHandle | None = None
        self._closed = False
        self._cleanups: set[asyncio.Task[None]] = set()
        self._launcher = Launcher()
        # Told each time an attempt has ended and given back what it reserved.
        self.on_slot_freed: Callable[[], None] | None = None

    # ---- the reaper -----------------------------------------------------------------------

    async def prepare(self) -> None:
        """Find the user attempts run as, clear the workspaces and control groups that
        earlier agents left, find the control groups the machine offers, and start the
        reaper; once, before the first attempt (again after a failure)."""
        if self._prepared is None:
            self._prepared = asyncio.get_running_loop().create_task(self._prepare())
        prepared = self._prepared
        try:
            await asyncio.shield(prepared)
        except Exception:
            if self._prepared is prepared:
                self._prepared = None  # the next call tries again
            raise

    async def _prepare(self) -> None:
        self._refusal = ""
        if self.config.run_as:
            try:
                self.user = RunAs.named(self.config.run_as)
            except ValueError as exc:
                # Never quietly as the agent's own user: each start fails, saying why.
                self._refusal = f"this agent cannot run actions as {self.config.run_as!r}: {exc}"
            else:
                self._base_env = base_environment(os.environ, self.user)
                self.workspaces.owner = self.user if self.user.switches else None
        if not self._refusal:
            try:
                await asyncio.to_thread(self.workspaces.clear)
            except OSError as exc:
                self._refusal = f"could not make its workspace: {exc}"
        if self._refusal:
            log.error("%s", self._refusal)
        if self.config.cgroups:
            self.cgroups = await asyncio.to_thread(cgroups.agent_groups, self.agent_id,
                                                   self.token)
        log.info("attempts are contained by %s", self.containment)
        self._ensure_reaper()
        self._launcher.start_spawner(lambda: self.cgroups, self.user, self.config)

    @property
    def runs_as(self) -> str:
        """Whom attempts run as, as `mesh agents` shows it."""
        if self.config.run_as and self.user.name != self.config.run_as:
            return f"none (cannot switch to {self.config.run_as})"
        return self.user.name

    @property
    def containment(self) -> str:
        """How attempts are contained here, as `mesh agents` shows it."""
        return self.cgroups.describe() if self.cgroups is not None else "process group"

    @property
    def reaper_pid(self) -> int | None:
        return self._reaper.pid if self._reaper is not None else None

    @property
    def spawner_pid(self) -> int | None:
        spawner = self._launcher.spawner
        return spawner.pid if spawner is not None else None

    def attempt_parents(self) -> tuple[int, ...]:
        """The processes other than the agent that start and reap attempts: the spawn
        server, while there is one."""
        pid = self.spawner_pid
        return (pid,) if pid is not None else ()

    def _ensure_reaper(self) -> ReaperHandle:
        if self._reaper is not None and self._reaper.alive():
            return self._reaper
        if self._reaper is not None:
            log.error("reaper %d exited (%s); starting another", self._reaper.pid,
                      self._reaper.process.returncode)
            if self.cgroups is not None:
                # It killed and removed this agent's groups on its way out: make them again.
                self.cgroups = cgroups.agent_groups(self.agent_id, self.token)
        self._reaper = ReaperHandle.spawn(
            self.token, ENV_AGENT, self.cgroups.bases() if self.cgroups is not None else None)
        for attempt in self._attempts.values():
            if attempt.pgid:
                self._reaper.register(attempt.pgid)
        return self._reaper

    def _unregister(self, pgid: int) -> None:
        if self._reaper is not None:
            self._reaper.unregister(pgid)

    # ---- the public calls -------------------------------------------------------------------

    async def start(self, assignment: Assignment) -> None:
        """Spawn the attempt and return once it runs (or has failed to start).

        A repeated start of a known attempt is ignored; a start of a newer attempt of an
        action this agent still runs supersedes (cancels) the older one.
        """
        # Awaited here, and for the spawn's answer alone after it. The attempt is admitted
        # before the spawn, so a repeated start meanwhile finds it and is ignored, and a
        # stop asked for meanwhile is carried out by its supervisor as soon as it runs.
        await self.prepare()
        if self._closed:
            raise RuntimeError("the agent is shutting down and takes no new attempts")
        key = (assignment.action_id, assignment.attempt)
        if key in self._attempts or key in self._ended:
            log.info("ignoring a repeated start of %s attempt %d", *key)
            return
        if assignment.assigned_at <= self._ended.forgot_through:
            raise RuntimeError(
                f"{key[0]} attempt {key[1]} was made before attempts this agent no longer "
                "remembers: it may have run here already, so it is not run again")
        for other in list(self._attempts.values()):
            if other.assignment.action_id != assignment.action_id:
                continue
            if other.assignment.attempt > assignment.attempt:
                log.warning("ignoring %s attempt %d: attempt %d is newer", *key,
                            other.assignment.attempt)
                return
            other.request_stop("cancelled", f"superseded by attempt {assignment.attempt}")

        reaper = self._ensure_reaper()  # no attempt runs unguarded: fail the start instead
        loop = asyncio.get_running_loop()
        attempt = self._admit(assignment)
        command = argv(assignment)
        cwd = assignment.action.cwd
        if self._refusal:
            await self._not_started(attempt, self._refusal)
            return
        try:
            attempt.workspace = self.workspaces.make(*key)
        except OSError as exc:
            await self._not_started(attempt, f"could not make its workspace: {exc}")
            return
        workdir = cwd or str(attempt.workspace)
        switched = self.user.switches
        # PWD as a shell would set it (a gated start's shell does): the same either way.
        # Another user gets the attempt's workspace as HOME: one it shares with no other
        # attempt, so nothing one plants there (dotfiles, tool configs) reaches the next.
        env = {**self._base_env, "PWD": workdir,
               **({"HOME": str(attempt.workspace)} if switched else {}),
               **assignment.action.env, **assignment.action.secrets,
               ENV_WORKSPACE: str(attempt.workspace), ENV_AGENT: self.token, **attempt.marks}
        try:
            if self.cgroups is not None:
                attempt.group = self.cgroups.take(self._memory_limit(assignment),
                                                  self.config.pids_max or None)
        except OSError as exc:
            await self._not_started(attempt, f"could not make its control group: {exc}")
            return
        try:
            await self._launcher.launch(attempt.child, attempt.group, self.user, command,
                                        workdir, env)
        except SpawnerGone as exc:
            # It may have started: whatever it left in its group goes with the group. The
            # action did not run here, so it waits for another start; the scheduler counts
            # the attempt as lost (its loss budget bounds starts that keep failing).
            attempt.child.abandon()
            await self._not_started(attempt, f"could not start it: {exc}", "refused")
            return
        except Exception as exc:  # any failure to spawn ends the attempt as failed
            attempt.child.abandon()
            await self._not_started(attempt, spawn_failure(exc, command, cwd))
            return
        attempt.pgid = attempt.child.pid
        # Watch it before anything else can fail: a running process must never be left
        # without the task that reports its end.
        attempt.task = loop.create_task(self._run(attempt))
        if not reaper.register(attempt.pgid):
            try:
                self._ensure_reaper()  # it died: a new one gets every group, this one too
            except Exception:
                # It runs already and is watched: refusing it now would run it twice.
                log.exception("no reaper guards %s attempt %d until one starts", *key)
        delay = self.config.running_report_delay
        if delay > 0:
            # Most CI actions run for seconds, but bursts of tiny ones would cost a report
            # call each just to say they started: an end within `delay` says it for them.
            attempt.running_timer = loop.call_later(delay, self._report_running, attempt)
        else:
            self._report(attempt, "running")

    def _admit(self, assignment: Assignment) -> _Attempt:
        shipper = LogShipper(self.logs, assignment.action_id, assignment.attempt,
                             self.config.log_flush_bytes, self.config.log_flush_interval,
                             MAX_PUSHES_IN_FLIGHT,
                             secrets=list(assignment.action.secrets.values()))
        attempt = _Attempt(assignment, shipper, ChildProcess(shipper))
        self._attempts[attempt.key] = attempt
        return attempt

    async def _not_started(self, attempt: _Attempt, reason: str,
                           stage: ReportStage | NotRun = "failed") -> None:
        await attempt.shipper.finish()  # an empty, closed log rather than one that never ends
        self._finish(attempt, Outcome(stage, None, reason))

    async def forgo(self, assignment: Assignment, reason: str,
                    stage: Literal["cancelled", "withdrawn"] = "cancelled") -> None:
        """End an attempt that was stopped before it started here (it waited for a slot):
        its log empty and closed, its end report sent, and remembered, so that its start is
        ignored if it comes again."""
        if not self.knows(assignment.action_id, assignment.attempt):
            await self._not_started(self._admit(assignment), reason, stage)

    def knows(self, action_id: ActionId, attempt: int) -> bool:
        """Whether the attempt runs here or ended here lately."""
        key = (action_id, attempt)
        return key in self._attempts or key in self._ended

    def runs_older(self, action_id: ActionId, attempt: int) -> bool:
        """Whether an earlier attempt of the action runs here (a start of this one stops it)."""
        return any(a == action_id and n < attempt for a, n in self._attempts)

    def reserved_cpus(self) -> float:
        """The CPUs the attempts that run here (or are being stopped) were given."""
        return sum(a.assignment.action.cpus for a in self._attempts.values())

    def _memory_limit(self, assignment: Assignment) -> int | None:
        memory = assignment.action.memory
        if memory and self.cgroups is not None and self.cgroups.memory is None \
                and not self._warned_memory:
            # E.g. cgroup v2 without the memory controller delegated to the agent's group.
            log.warning("memory requests are reserved but not enforced here: no memory "
                        "controller the agent may use (%s)", self.containment)
            self._warned_memory = True
        return int(memory * (1 + self.config.memory_headroom)) if memory else None

    def _report_running(self, attempt: _Attempt) -> None:
        attempt.running_timer = None
        self._report(attempt, "running")

    async def cancel(self, action_id: ActionId, attempt: int, reason: str = "",
                     ) -> CancelOutcome:
        """Kill the attempt's whole tree and wait until it has ended and been reported.
        A `reason` goes into the attempt's log as its last line, so its reader sees why.

        "finished" when it had already ended (its end report may still be on the way),
        "unknown" when this agent never started it (or ended it too long ago to remember).
        """
        key = (action_id, attempt)
        running = self._attempts.get(key)
        if running is None:
            return self._ended.stopped_unknown(key)
        if reason and running.stop_reason is None:
            running.shipper.add_line("stderr", f"actionmesh: stopping this attempt: {reason}")
        running.request_stop("cancelled", reason or "cancelled")
        await running.done.wait()
        return "stopped"

    def process_groups(self) -> list[int]:
        """The process group (== session) of every attempt whose processes may still run:
        what the load sampler counts as the mesh's own CPU use."""
        return [a.pgid for a in self._attempts.values() if a.pgid]

    def holdings(self) -> AgentHoldings:
        """What runs here and the end reports of what ended lately that the scheduler has
        not said it wrote, oldest first."""
        return AgentHoldings(
            running=[HeldAttempt(action_id=a, attempt=n) for a, n in self._attempts],
            ended=self._ended.unrecorded())

    async def shutdown(self) -> None:
        """Kill every attempt (TERM, grace, KILL), then the reaper; take no new work.

        No end reports are sent: the agent is going away, and to the scheduler its attempts
        are lost (to be run again) rather than cancelled by a user.
        """
        self._closed = True
        attempts = list(self._attempts.values())
        for attempt in attempts:
            attempt.request_stop("cancelled", "the agent shut down", report=False)
        await asyncio.gather(*(a.done.wait() for a in attempts))
        self._launcher.close()
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.close)
        await asyncio.to_thread(self.workspaces.close)
        if self._reaper is not None:
            reaper, self._reaper = self._reaper, None
            if await asyncio.to_thread(reaper.close) is None:
                log.warning("reaper %d has not exited after its pipe was closed", reaper.pid)

    # ---- one attempt's life -------------------------------------------------------------------

    async def _run(self, attempt: _Attempt) -> None:
        try:
            await self._supervise(attempt)
        except Exception:
            # A bug here must not leave a process behind or the scheduler waiting forever.
            log.exception("supervising %s attempt %d failed", *attempt.key)
            self._kill_all(attempt)
            attempt.child.close_pipes()
            self._finish(attempt, Outcome("failed", None, "the agent lost track of it"))

    async def _supervise(self, attempt: _Attempt) -> None:
        child = attempt.child
        timeout = attempt.assignment.action.timeout
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        stop = asyncio.ensure_future(attempt.stop_requested.wait())
        ends: set[asyncio.Future[Any]] = {child.exited, stop}
        try:
            await asyncio.wait(ends, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        stopped = None
        if not child.exited.done():
            if attempt.stop_reason is None:
                attempt.request_stop("timed_out", f"timed out after {timeout:g}s")
            stopped = attempt.stop_reason
            await self._terminate(attempt)
        # Whatever the main process left running in its groups goes with it.
        self._kill_all(attempt)
        if not await self._drain(attempt, deadline):
            stopped = stopped or attempt.stop_reason
        returncode = child.returncode
        assert returncode is not None
        await attempt.shipper.finish()
        group = attempt.group
        oom = group.memory_limit if group is not None and group.oom_kills() else None
        self._finish(attempt, outcome(None if child.status_lost else returncode, stopped, oom))

    async def _terminate(self, attempt: _Attempt) -> None:
        self._killpg(attempt.pgid, signal.SIGTERM)
        await asyncio.wait({attempt.child.exited}, timeout=self.config.kill_grace)
        self._kill_all(attempt)
        # Descendants that left the group (setsid, double fork) still carry the marks.
        await asyncio.to_thread(procscan.kill_marked, self._marks(attempt))
        await attempt.child.exited

    async def _drain(self, attempt: _Attempt, deadline: float | None) -> bool:
        """Wait for both pipes to reach EOF while the output keeps flowing, hunting down by
        its marks a process left behind that holds them once they go quiet. A stop or the
        action's timeout during the wait cuts it short: False then."""
        child = attempt.child
        if child.pipes_closed.done():
            return True  # as for most: both pipes reached EOF by the time the exit was seen
        loop = asyncio.get_running_loop()
        if deadline is not None:  # an exit just in time still gets its output read
            deadline = max(deadline, loop.time() + DRAIN_QUIET)
        # A stop asked before the drain has had its kill; only a later one cuts it short.
        stop = None if attempt.stop_requested.is_set() else \
            asyncio.ensure_future(attempt.stop_requested.wait())
        ends: set[asyncio.Future[Any]] = {child.pipes_closed} | ({stop} if stop else set())
        hunted = False
        try:
            while True:
                seen = child.bytes_read
                left = DRAIN_QUIET if deadline is None else deadline - loop.time()
                await asyncio.wait(ends, timeout=max(0.0, min(DRAIN_QUIET, left)),
                                   return_when=asyncio.FIRST_COMPLETED)
                if child.pipes_closed.done():
                    return True
                stopped = stop is not None and stop.done()
                if stopped or (deadline is not None and loop.time() >= deadline):
                    break
                if child.bytes_read != seen or attempt.shipper.congested:
                    continue
                if hunted:
                    await self._close_output(attempt)
                    return True
                await asyncio.to_thread(procscan.kill_marked, self._marks(attempt))
                hunted = True
        finally:
            if stop is not None:
                stop.cancel()
        # Cut short: a process that left its groups and keeps writing would otherwise hold
        # the attempt open past its timeout, and a cancel with it.
        if attempt.stop_reason is None:
            attempt.request_stop("timed_out",
                                 f"timed out after {attempt.assignment.action.timeout:g}s")
        await asyncio.to_thread(procscan.kill_marked, self._marks(attempt))
        await asyncio.wait({child.pipes_closed}, timeout=DRAIN_QUIET)
        if not child.pipes_closed.done():
            await self._close_output(attempt)
        return False

    async def _close_output(self, attempt: _Attempt) -> None:
        log.warning("%s attempt %d: a process outside our reach holds its output; closing "
                    "the pipes", *attempt.key)
        attempt.child.close_pipes()
        await attempt.child.pipes_closed

    def _kill_all(self, attempt: _Attempt) -> None:
        """SIGKILL the attempt's process group and its control group."""
        self._killpg(attempt.pgid, signal.SIGKILL)
        if attempt.group is not None:
            try:
                attempt.group.kill()
            except OSError as exc:
                log.warning("killing the control group of %s attempt %d failed: %s",
                            *attempt.key, exc)

    def _marks(self, attempt: _Attempt) -> dict[str, str]:
        return {ENV_AGENT: self.token, **attempt.marks}

    @staticmethod
    def _killpg(pgid: int, sig: int) -> None:
        if pgid <= 1:
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass  # the group is already empty
        except PermissionError:
            log.warning("no permission to signal process group %d", pgid)

    def _finish(self, attempt: _Attempt, end: Outcome) -> None:
        if attempt.running_timer is not None:
            attempt.running_timer.cancel()  # the end report implies the start
            attempt.running_timer = None
        if attempt.pgid:
            self._unregister(attempt.pgid)
        attempt.child.close()
        self._attempts.pop(attempt.key, None)
        report = None
        if attempt.send_end_report:
            report = self._report(attempt, end.stage, end.exit_code, end.reason)
        self._ended.remember(attempt.key, report, attempt.assignment.assigned_at)
        # Only a control group tells that nothing of the attempt runs on (a process group
        # can be left): then its empty directory may serve the next attempt.
        vacated = False
        if attempt.group is not None and self.cgroups is not None:
            vacated = attempt.group.empty()
            if not self.cgroups.give_back(attempt.group, vacated):
                self._spawn_cleanup(attempt.group.remove)
        workspace = attempt.workspace
        if workspace is not None and not self.workspaces.release(workspace, vacated):
            self._spawn_cleanup(self.workspaces.remove_tree, workspace)
        attempt.done.set()
        if self.on_slot_freed is not None:
            self.on_slot_freed()

    def _spawn_cleanup(self, work: Callable[..., Any], *args: Any) -> None:
        """Run slow clean-up work off the event loop."""
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(work, *args))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def recorded(self, report: AttemptReport) -> None:
        """The scheduler has written this report: a restarted one will not need it."""
        self._ended.recorded(report)

    def _report(self, attempt: _Attempt, stage: ReportStage | NotRun, exit_code: int | None = None,
                reason: str = "") -> AttemptReport:
        report = AttemptReport(
            action_id=attempt.assignment.action_id,
            attempt=attempt.assignment.attempt,
            agent_id=self.agent_id,
            stage=stage,
            time=self.clock(),
            exit_code=exit_code,
            reason=reason,
        )
        try:
            self.reports.report(report)
        except Exception:
            log.exception("reporting %s of %s attempt %d failed", stage, *attempt.key)
        return report
