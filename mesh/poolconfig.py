"""The pool config file: named groups of agents with their capacity, blocked flag and
capabilities, and the jobs' manual group assignments and colocation sets.

In the spirit of the Prow dispatcher's cluster file (`../shared/seeds/004`): a group is
matched by node labels and hostname patterns instead of being a cluster; agents in no
group form the group `default`. A file that does not validate is refused whole, each
problem named by its field.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from mesh.errors import InvalidInput
from mesh.schema import MAX_JOB_NAME, Model, check_label, parse_duration

# The group of every agent that no group of the file matches.
DEFAULT_GROUP = "default"
# A name is also the value of the label that says an agent's group, so it reads as one.
GroupName = Annotated[str, Field(pattern=r"^[a-z0-9](?:[a-z0-9_.-]{0,61}[a-z0-9])?$")]
# The label every agent offers for its group (`mesh-group:big`). An action may require it
# like any label; a job's assignment is expressed with it (see `group_label`).
GROUP_LABEL_KEY = "mesh-group"
GROUP_LABEL_PREFIX = GROUP_LABEL_KEY + ":"
JobName = Annotated[str, Field(min_length=1, max_length=MAX_JOB_NAME)]
MAX_GROUPS = 1000
# Why a job goes to its group: the pool config says so, the last dispatch, or it first ran there.
HomeKind = Literal["manual", "dispatched", "first run"]
# Who blocked a group: nobody, its pool config, or an operator by hand.
BlockedBy = Literal["", "config", "operator"]
MAX_JOBS = 100_000
# Values in a pool config once YAML's aliases are expanded: an alias names a value written
# elsewhere, so a few kilobytes of aliases of aliases can stand for billions of them.
MAX_VALUES = 1_000_000


def group_label(group: str) -> str:
    """The label that agents of `group` offer."""
    return GROUP_LABEL_PREFIX + group


class GroupMatch(Model):
    """Which agents a group holds: those that offer every one of `labels` of their own
    (`pool:big`, `os:linux`: node labels as `mesh agents` shows them), and, when
    `hostnames` are given, whose hostname matches one of them (shell patterns: `build-*`)."""

    labels: list[str] = Field(default_factory=list, max_length=64)
    hostnames: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default_factory=list, max_length=256)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        return [check_label(label) for label in value]

    @model_validator(mode="after")
    def _something(self) -> GroupMatch:
        if not self.labels and not self.hostnames:
            raise ValueError("give labels, hostnames or both: an empty match would take "
                             "every agent")
        return self

    def holds(self, hostname: str, labels: Collection[str]) -> bool:
        if any(label not in labels for label in self.labels):
            return False
        return not self.hostnames or any(fnmatch.fnmatchcase(hostname, pattern)
                                         for pattern in self.hostnames)


class Group(Model):
    """A named set of agents and how the mesh may use them."""

    match: GroupMatch
    capacity: int = Field(100, ge=1, le=100,
                          description="the share of each machine (percent) the mesh may reserve")
    blocked: bool = Field(False, description="no new work; running work finishes")
    capabilities: list[str] = Field(
        default_factory=list, max_length=64,
        description="labels this group's agents offer besides their own")

    @field_validator("capabilities")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        return [check_label(label) for label in value]


class JobAssignment(Model):
    """A job's group, set by hand: a preference (its caches are warm there), or with
    `pin` a requirement."""

    group: GroupName
    pin: bool = False


class PoolConfig(Model):
    """The whole file. Groups are tried in the order written; the first that matches an
    agent has it."""

    groups: dict[GroupName, Group] = Field(default_factory=dict, max_length=MAX_GROUPS)
    assignments: dict[JobName, JobAssignment] = Field(default_factory=dict,
                                                      max_length=MAX_JOBS)
    colocate: list[list[JobName]] = Field(
        default_factory=list, max_length=MAX_JOBS,
        description="sets of jobs that must share a group")
    dispatch_window: float = Field(14 * 86400.0, ge=3600, le=366 * 86400,
                                   description="how far back recorded load counts")
    dispatch_every: float = Field(86400.0, ge=60, le=366 * 86400,
                                  description="how often assignments are computed again")

    @field_validator("assignments", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `job: group` is short for `job: {group: group}`.
        if isinstance(value, dict):
            return {job: {"group": given} if isinstance(given, str) else given
                    for job, given in value.items()}
        return value

    @field_validator("dispatch_window", "dispatch_every", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("groups")
    @classmethod
    def _not_default(cls, value: dict[str, Group]) -> dict[str, Group]:
        if DEFAULT_GROUP in value:
            raise ValueError(f"{DEFAULT_GROUP!r} is the group of agents no group matches; "
                             "give yours another name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PoolConfig:
        known = {*self.groups, DEFAULT_GROUP}
        for job, given in self.assignments.items():
            if given.group not in known:
                raise ValueError(f"assignments.{job}: no group {given.group!r} (groups: "
                                 f"{', '.join(sorted(known))})")
        seen: dict[str, int] = {}
        for index, jobs in enumerate(self.colocate):
            if len(jobs) < 2:
                raise ValueError(f"colocate.{index}: a set needs two jobs or more")
            for job in jobs:
                if job in seen:
                    raise ValueError(f"colocate.{index}: job {job!r} is already in set "
                                     f"{seen[job]}")
                seen[job] = index
            pinned = {self.assignments[j].group for j in jobs if j in self.assignments}
            if len(pinned) > 1:
                raise ValueError(f"colocate.{index}: its jobs are assigned to different "
                                 f"groups ({', '.join(sorted(pinned))}) but must share one")
        return self

    def group_of(self, hostname: str, labels: Collection[str]) -> str:
        """The group an agent with this hostname and these labels of its own is in."""
        for name, group in self.groups.items():
            if group.match.holds(hostname, labels):
                return name
        return DEFAULT_GROUP

    @classmethod
    def parse(cls, text: str, where: str = "pool config") -> PoolConfig:
        """The config in a YAML text; InvalidInput naming each bad field (or the line of
        bad YAML) otherwise."""
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark is not None else ""
            raise InvalidInput(f"{where}: not YAML{at}: {exc}", [(where, "not YAML")]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InvalidInput(f"{where}: expected a mapping at the top, got "
                               f"{type(loaded).__name__}", [(where, "not a mapping")])
        if not _holds_at_most(loaded, MAX_VALUES):
            raise InvalidInput(f"{where}: more than {MAX_VALUES:,} values once its aliases "
                               "are expanded", [(where, "too many values")])
        try:
            return cls.model_validate(loaded)
        except ValidationError as exc:
            raise InvalidInput.from_validation(where, exc) from None


def _holds_at_most(loaded: Any, limit: int) -> bool:
    """Whether the loaded YAML, each alias counted as often as it is used, has at most
    `limit` values (keys included); it stops counting past the limit."""
    todo = [loaded]
    seen = 0
    while todo:
        value = todo.pop()
        seen += 1
        if seen > limit:
            return False
        if isinstance(value, dict):
            todo.extend(value.keys())
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return True


class GroupStatus(Model):
    """A group as the scheduler sees it now."""

    name: str
    capacity: float = Field(description="the share of each machine (percent) the mesh may "
                            "reserve there")
    blocked: bool
    blocked_by: BlockedBy = Field(
        "", description="who blocked it: the pool config, or an operator (`mesh groups block`)")
    capabilities: list[str]
    agents: list[str] = Field(description="ids of its agents")
    cpus: float = Field(description="CPUs the mesh may reserve on its live agents")
    jobs: int = Field(description="jobs assigned to it")
    load: float = Field(description="CPU-seconds of its jobs in the dispatch window")


class JobHome(Model):
    """Where a job's work goes, and why."""

    job: str
    group: str
    how: HomeKind = Field(
        description="set in the pool config, by the last dispatch, or where the job first ran")
    pinned: bool = Field(description="a requirement (the job waits for its group), not a "
                         "preference")
    load: float = Field(description="the job's CPU-seconds in the dispatch window")


class PoolStatus(Model):
    """The pool config in force, and its groups now."""

    config: PoolConfig
    groups: list[GroupStatus]
    dispatched_at: float | None = Field(None, description="when jobs were last dispatched")
    next_dispatch_at: float | None = None
