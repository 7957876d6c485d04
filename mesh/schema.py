"""The one schema users see: pydantic models for actions, agents, loads, accounts, stage events
and log batches. What agents and the scheduler say to each other is in `mesh/protocol.py`."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NewType, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mesh.stages import TERMINAL, Stage

ActionId = NewType("ActionId", str)
AgentId = NewType("AgentId", str)
AccountId = NewType("AccountId", str)
Priority = NewType("Priority", int)

# A label is `name` or `name:value` (`vpn`, `os:linux`, `arch:arm64`); both parts start and
# end with an alphanumeric, so labels map one to one onto Ray node labels (key, value).
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_./-]{0,126}[A-Za-z0-9])?"
LABEL_RE = re.compile(rf"^{_PART}(?::{_PART})?$")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The longest size or duration text read. Longer ones are refused before a pattern runs:
# backtracking on a long run of digits or spaces costs time quadratic in its length.
MAX_QUANTITY_TEXT = 64


def _quantity_text(value: str, expected: str) -> str:
    if len(value) > MAX_QUANTITY_TEXT:
        raise ValueError(f"expected {expected}, got a text of {len(value):,} characters")
    return value


def parse_size(value: Any) -> int:
    """Bytes from an int or a string: `2G` and `2GiB` are binary (2 * 1024**3), `2GB` decimal.

    A bare suffix is binary, as `docker --memory 2g` reads it.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int | float):
        # Compared, not converted: float() of a huge int overflows. Fields bound the rest.
        if value < 0:
            raise ValueError(f"size must not be negative, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"size must be finite, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 512M or 2G, got {value!r}")
    match = _SIZE_RE.match(_quantity_text(value, "a size such as 512M or 2G"))
    if match is None:
        raise ValueError(f"expected a size such as 512M or 2G, got {value!r}")
    number, unit, tail = match.groups()
    power = "KMGT".find(unit.upper()) + 1 if unit else 0
    base = 1000 if tail.upper() == "B" and unit else 1024
    return int(float(number) * base**power)  # finite: the text is at most 64 characters


def default_state_dir() -> str:
    """Per user, as the XDG base directories put state: `$XDG_STATE_HOME/actionmesh`, else
    `~/.local/state/actionmesh` (a shared default such as /tmp/actionmesh would show one
    user's actions, their environments and logs to every other)."""
    # Imported here: what the pure core imports reads no environment when imported.
    import os

    base = os.environ.get("XDG_STATE_HOME", "")
    if not base.startswith("/"):
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "actionmesh")


def format_size(n: float) -> str:
    """Bytes as people read them: 512B, 1.5KiB ... 2.0TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TiB"


def format_duration(seconds: float) -> str:
    """A duration as people read it, to its largest unit: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as `90`, `90s`, `30m`, `1h30m`, `250ms`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"duration is too large, got {value!r}") from None
    elif isinstance(value, str):
        text = _quantity_text(value, "a duration such as 90s, 30m or 1h30m").strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_RE.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"expected a duration such as 90s, 30m or 1h30m, got {value!r}"
                ) from None
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration such as 90s or 30m, got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def check_label(label: str) -> str:
    if not LABEL_RE.match(label):
        raise ValueError(
            f"malformed label {label!r}: expected `name` or `name:value`, each part starting "
            "and ending with a letter or digit"
        )
    return label


def _check_variables(variables: dict[str, str], what: str) -> None:
    for name, text in variables.items():
        if not ENV_NAME_RE.match(name):
            raise ValueError(f"malformed environment variable name {name!r}")
        _exec_string(f"{what} {name}", f"{name}={text}")


def _exec_string(what: str, text: str) -> None:
    if "\0" in text:
        raise ValueError(f"{what} holds a NUL byte, which exec cannot pass")
    if len(text) > MAX_ARG_BYTES // 4 and len(text.encode()) > MAX_ARG_BYTES:
        raise ValueError(f"{what} is over {MAX_ARG_BYTES} bytes, the most exec takes in one")


def check_path(value: str, what: str) -> str:
    """An absolute path an agent or the head can use as it is."""
    if "\0" in value:
        raise ValueError(f"{what} holds a NUL byte")
    if not value.startswith("/"):
        raise ValueError(f"{what} must be an absolute path, got {value[:200]!r}")
    if len(value) > MAX_PATH:
        raise ValueError(f"{what} is longer than {MAX_PATH} characters")
    return value


def check_id(value: str, what: str) -> str:
    if not ID_RE.match(value):
        raise ValueError(
            f"malformed {what} {value!r}: 1-128 characters of letters, digits and . _ : @ -,"
            " starting with a letter or digit"
        )
    return value


# Validation context for models read back from the scheduler's own store: they passed
# every check when they were accepted, so the checks that cost Python code per value
# (ids, labels, names) are skipped; types and bounds are still checked by pydantic.
STORED: dict[str, bool] = {"stored": True}


def _stored(info: ValidationInfo) -> bool:
    context = info.context
    return isinstance(context, dict) and context.get("stored") is True


class Model(BaseModel):
    """Base of every model crossing a boundary: unknown fields are refused, and so are
    infinite and not-a-number floats (neither survives the store: JSON has no infinity,
    and SQLite turns NaN into NULL)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True,
                              allow_inf_nan=False)


# Bounds for numbers that cross a boundary. Each is far beyond any real fleet and well
# inside what the store keeps (SQLite integers are 64-bit), so that a value accepted can
# always be written: a record that cannot be written would stop the scheduler again on
# every restart (agents resend their recent reports).
MAX_COUNT = 2**31 - 1  # attempt numbers, sequence numbers, offsets, limits
MAX_PAGE = 10_000  # actions in one page of a listing
MAX_JOB_NAME = 256
MAX_BYTES = 2**60  # 1 EiB
MAX_CPUS = 2.0**20
MAX_INSTANT = 1e11  # seconds since the epoch: the year 5138
MAX_SECONDS = 365 * 86400.0  # a duration: a year
# Quota earning rate per priority, in CPU-seconds per second (a million CPUs busy).
MAX_CHARGE_RATE = 1e6
# What exec takes: one argument or environment entry of at most 32 pages (the kernel's
# MAX_ARG_STRLEN), all of them together at most ARG_MAX (2 MiB with an 8 MiB stack), of
# which an action may use half: the base environment and the marks come on top.
MAX_ARG_BYTES = 128 * 1024
MAX_EXEC_BYTES = 1024 * 1024
MAX_PATH = 4096
MAX_LABELS = 256
MAX_TAGS = 256
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 1024
# What a read shows for a secret's value, and what replaces it in logs (as hosted CI does).
SECRET_MASK = "***"
# Bounds of the gateway's bearer token.
MIN_TOKEN = 16
MAX_TOKEN = 4096

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
AttemptNumber = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Cpus = Annotated[float, Field(ge=0, le=MAX_CPUS)]
# CPUs and memory are compared with a little slack, wherever reservations are summed (the
# scheduler's placement, an agent's held starts), so that 0.1 + 0.2 CPUs fit in 0.3.
EPSILON = 1e-9
Instant = Annotated[float, Field(ge=0, le=MAX_INSTANT)]
# An exit status, or minus the signal that ended it.
ExitCode = Annotated[int, Field(ge=-255, le=255)]


class RetryPolicy(Model):
    """How many more attempts an action gets, counted separately by cause."""

    on_failure: int = Field(0, ge=0, le=100, description="retries after a non-zero exit or timeout")
    on_lost: int = Field(3, ge=0, le=100, description="retries after the agent or node died")
    quarantine_after: int = Field(
        3, ge=1, le=100, description="fail it once it was lost with this many different "
        "agents in a row: an action that kills its agents must not walk through the fleet")


class Action(Model):
    """What a controller submits: one CI job unit."""

    id: ActionId | None = Field(
        None, description="client-chosen id; submitting the same id twice gives one action"
    )
    command: list[str] = Field(..., min_length=1, max_length=MAX_EXEC_BYTES // 2,
                               description="argv, or [script] with shell")
    shell: bool = Field(False, description="run command[0] with /bin/sh -c")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    secrets: dict[str, str] = Field(
        default_factory=dict, validate_default=True,
        description="environment variables whose values are secret: never shown by a read "
        f"(their names are, with {SECRET_MASK!r}), sealed in the state file, masked in logs")
    cwd: str | None = Field(None, description="working directory on the agent")
    cpus: float = Field(1.0, ge=0, le=4096, description="CPUs reserved while it runs")
    memory: Bytes = Field(0, description="bytes of memory reserved while it runs")
    labels: list[str] = Field(default_factory=list, max_length=MAX_LABELS,
                              description="base labels, all required")
    provisionable_labels: list[str] = Field(
        default_factory=list, max_length=MAX_LABELS,
        description="labels preferred but not required"
    )
    account: AccountId = Field(AccountId(""), description="quota account; empty for none")
    job: str = Field("", max_length=MAX_JOB_NAME,
                     description="job name this action belongs to")
    timeout: float | None = Field(None, gt=0, le=MAX_SECONDS,
                                  description="seconds before it is timed out")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or _stored(info):
            return value
        return check_id(value, "action id")

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value[0].strip():
            raise ValueError("command must not be empty: its first element is blank")
        if not _stored(info):
            for i, arg in enumerate(value):
                _exec_string(f"argument {i}", arg)
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if _stored(info):
            return value
        _check_variables(value, "variable")
        return value

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if _stored(info):
            return value
        _check_variables(value, "secret")
        env = info.data.get("env", {})
        both = sorted(set(env) & set(value))
        if both:
            raise ValueError(f"{', '.join(both)}: in env and in secrets; give each name once")
        # Here rather than in a model validator, which would run again each time a valid
        # action is put into another model. Also what keeps any action well inside one
        # report channel frame.
        total = sum(len(a.encode()) + 1 for a in info.data.get("command", [])) + sum(
            len(k.encode()) + len(v.encode()) + 2 for k, v in [*env.items(), *value.items()])
        if total > MAX_EXEC_BYTES:
            raise ValueError(f"command, env and secrets take {total} bytes; exec allows an "
                             f"action at most {MAX_EXEC_BYTES}")
        return value

    def identified(self) -> Action:
        """The action with an id: its own, else a new random one. Chosen by whoever sends
        it first, so that sending it again after a lost answer finds the same action
        instead of creating a second one."""
        if self.id is not None:
            return self
        return self.model_copy(update={"id": ActionId(uuid.uuid4().hex)})

    def masked(self) -> Action:
        """The spec as reads show it: each secret's name, never its value."""
        if not self.secrets:
            return self
        return self.model_copy(update={"secrets": dict.fromkeys(self.secrets, SECRET_MASK)})

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or _stored(info):
            return value
        return check_path(value, "cwd")

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if _stored(info):
            return value
        if len(value) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags, got {len(value)}")
        for key, text in value.items():
            if not key or len(key) > MAX_TAG_KEY or len(text) > MAX_TAG_VALUE:
                raise ValueError(f"tag {key[:40]!r}: keys are 1-{MAX_TAG_KEY} characters, "
                                 f"values at most {MAX_TAG_VALUE}")
            if "\0" in key or "\0" in text:
                raise ValueError(f"tag {key[:40]!r} holds a NUL byte")
        return value

    @field_validator("labels", "provisionable_labels")
    @classmethod
    def _labels(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if _stored(info):
            return value
        return sorted({check_label(label) for label in value})

    @field_validator("account")
    @classmethod
    def _account(cls, value: str, info: ValidationInfo) -> str:
        return value if value == "" or _stored(info) else check_id(value, "account id")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _shell(self) -> Action:
        if self.shell and len(self.command) != 1:
            raise ValueError(
                f"with shell=True, command must be one script string, got {len(self.command)}"
            )
        return self


NUM_PRIORITIES = 5  # paid priorities 0 (highest) .. 4; the free bucket is below them
# The level below every paid one: work whose account has no positive balance runs here.
FREE_BUCKET = Priority(NUM_PRIORITIES)


class AccountConfig(Model):
    """A quota account: how fast it earns the right to run work at each priority, how much
    it may save up, and how far its work may fan out (the quotascheduler model)."""

    charge_rate: list[float] = Field(
        default_factory=list, max_length=NUM_PRIORITIES,
        description="per priority 0 (highest) .. 4: CPU-seconds earned per second, i.e. the "
        "CPUs the account may keep busy on average at that priority; missing ones are 0")
    max_charge_seconds: float = Field(
        0.0, ge=0, le=10 * 365 * 86400,
        description="how many seconds of earning a balance may hold: the cap at each "
        "priority is charge_rate x max_charge_seconds")
    max_fanout: int = Field(
        0, ge=0, le=2**31 - 1,
        description="most paid actions running at once per set of labels (0: no limit); "
        "more run in the free bucket")
    # Bounded: each pass checks every limit for each waiting action against each agent.
    per_label_task_limits: dict[Annotated[str, Field(min_length=1, max_length=128)], Count] = Field(
        default_factory=dict, max_length=MAX_LABELS,
        description="label prefix -> most of this account's actions running at once on "
        "agents with the same label of that prefix (e.g. {'model': 2})")
    disable_free_tasks: bool = Field(
        False, description="never start this account's work in the free bucket")
    description: str = Field("", max_length=1024)

    @field_validator("charge_rate")
    @classmethod
    def _rates(cls, value: list[float]) -> list[float]:
        for priority, rate in enumerate(value):
            if not 0 <= rate <= MAX_CHARGE_RATE:
                raise ValueError(f"charge rate at priority {priority} must be a number from 0 "
                                 f"to {MAX_CHARGE_RATE:g} (CPU-seconds per second), got {rate!r}")
        return value

    @field_validator("per_label_task_limits")
    @classmethod
    def _limits(cls, value: dict[str, int]) -> dict[str, int]:
        for prefix in value:
            if not prefix.strip():
                raise ValueError("a per-label limit needs a non-empty label prefix")
        return value


class AccountStatus(Model):
    """An account as the quota scheduler sees it now."""

    id: AccountId
    config: AccountConfig
    balance: list[float] = Field(description="per priority 0 .. 4, in CPU-seconds")
    running: int = 0
    running_cpus: float = 0.0
    running_by_priority: dict[int, int] = Field(
        default_factory=dict, description="running actions by the priority they run at")
    queued_by_priority: dict[int, int] = Field(
        default_factory=dict, description="queued actions by the priority they would be "
        "matched at now (5: the free bucket)")


class QuotaOptions(Model):
    """Pool-wide options of the quota scheduler."""

    disable_preemption: bool = Field(
        False, description="never stop lower-priority work to make room for higher")
    agent_expiry: float = Field(
        300.0, gt=0, le=30 * 86400,
        description="seconds an idle agent may go unconfirmed before the quota scheduler "
        "forgets it (upstream's bot expiration)")


class Load(Model):
    """One psutil sample of an agent's machine."""

    cpu_percent: float = Field(..., ge=0, le=100, description="the whole machine's CPU use")
    mesh_cpu_percent: float = Field(
        0.0, ge=0, le=100,
        description="of it, what this agent's attempts used over the same interval (0 from "
        "agents that do not measure it)")
    cpu_count: int = Field(..., ge=1, le=int(MAX_CPUS), description="logical CPUs of the machine")
    memory_total: Bytes
    memory_used: Bytes
    memory_available: Bytes
    load_avg: tuple[Cpus, Cpus, Cpus] = (0.0, 0.0, 0.0)
    sampled_at: Instant = Field(..., description="agent wall-clock time of the sample")

    @property
    def foreign_cpu_percent(self) -> float:
        """CPU use the mesh's own attempts do not explain: other processes, Ray, the agent.
        Derived, not stored, so that the two figures can never disagree."""
        return max(0.0, self.cpu_percent - self.mesh_cpu_percent)


class AgentInfo(Model):
    """What an agent says about its machine when it registers."""

    agent_id: AgentId
    node_id: str
    hostname: str
    address: str
    labels: list[str]
    cpus: Cpus = Field(..., description="CPUs this agent offers (the Ray node's CPUs)")
    memory: Bytes = Field(..., description="bytes of memory this agent offers")
    pid: Count
    started_at: Instant
    runs_as: str = Field("", description="the user its actions run as")
    containment: str = Field(
        "process group", description="how its attempts are contained: 'process group', or "
        "'cgroup (...)' with what kills them and which hierarchies limit memory and pids")
    holds_starts: bool = Field(
        False, description="it holds a start until its running attempts leave it room "
        "(Assignment.within_cpus), so it may be handed work ahead of a free slot")


# Alive or suspect is what the agent's answers say; draining (work still running) and
# drained (none left) are an operator's drain of a live agent; blocked is its group's.
AgentState = Literal["alive", "suspect", "draining", "drained", "blocked", "dead"]


class RunningAttempt(Model):
    action_id: ActionId
    attempt: int
    stage: Stage
    cpus: float
    memory: int


class AgentStatus(Model):
    """An agent as the pool sees it: machine, live load, reservations."""

    info: AgentInfo
    state: AgentState
    group: str = Field("default", description="its group in the pool config")
    capacity_percent: float
    load: Load | None
    load_age: float | None = Field(None, description="seconds since the last load report")
    reserved_cpus: float
    reserved_memory: int
    running: list[RunningAttempt]
    link: Literal["stream", "ray"] = Field(
        "ray", description="how it talks with the scheduler now: its gRPC stream, or Ray "
        "calls (while the stream cannot open, or with `link` set to ray)")
    link_since: Instant | None = Field(None, description="since when it has talked that way")


class Health(Model):
    """Whether the scheduler serves, and whether it can write its state."""

    serving: bool = Field(description="the saved state is loaded and squared with the agents")
    store: Literal["ok", "read-only"] = "ok"
    reason: str = Field("", description="why the store is read-only")
    since: float | None = Field(None, description="when it became read-only")
    link: Literal["stream", "ray", "down"] = Field(
        "ray", description="the agents' link: its gRPC server serving (stream), Ray calls "
        "alone as configured (ray), or a stream configured whose server is not serving")


Verdict = Literal["healthy", "degraded", "down"]


class MeshHealth(Model):
    """The mesh as a probe sees it: what each part says, and one verdict with its reasons."""

    verdict: Verdict
    problems: list[str] = Field(default_factory=list, description="why it is not healthy")
    scheduler: Health | None = Field(None, description="None: the scheduler did not answer")
    relay: bool = Field(False, description="the log relay answered")
    agents: dict[str, int] = Field(default_factory=dict, description="agents by state")
    agents_by_ray: int = Field(0, description="agents reporting by Ray calls while the "
                               "stream is the configured link")

    @property
    def store(self) -> str:
        return self.scheduler.store if self.scheduler is not None else "unknown"

    @property
    def reason(self) -> str:
        return self.scheduler.reason if self.scheduler is not None else ""


class Rejection(Model):
    """Why one agent cannot take one action: one failed placement check."""

    agent_id: AgentId
    check: str
    detail: str
    requested: float = 0.0
    available: float = 0.0


class PendingReason(Model):
    """Why a queued action is not running, as data and as a sentence."""

    summary: str
    unplaceable: bool = False
    rejections: list[Rejection] = Field(default_factory=list)
    priority: int | None = Field(
        None, description="the quota priority it would be matched at now; 5 is free")
    quota: str = Field("", description="what its account's quota says about it")


class AttemptRecord(Model):
    number: AttemptNumber
    agent_id: AgentId
    agent_started_at: float | None = Field(
        None, description="when the agent process it was given to started: tells that "
        "process from a later one on the same node")
    assigned_at: float
    started_at: float | None = None
    finished_at: float | None = None
    outcome: Stage | Literal["lost", "preempted"] | None = None
    priority: int = Field(FREE_BUCKET, ge=0, le=FREE_BUCKET,
                          description="the quota priority it was started at; 5 is free")
    exit_code: ExitCode | None = None
    reason: str = ""


class ActionStatus(Model):
    """An accepted action with everything the scheduler knows about it."""

    action: Action
    id: ActionId
    stage: Stage
    attempt: int = Field(0, description="current attempt number; 0 before the first")
    agent_id: AgentId | None = None
    submitted_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    pending: PendingReason | None = None
    attempts: list[AttemptRecord] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.stage in TERMINAL

    @property
    def ok(self) -> bool:
        return self.stage is Stage.SUCCEEDED


class ListQuery(Model):
    """Which accepted actions to list, a page at a time, in submission order."""

    stage: Stage | None = None
    account: AccountId | None = None
    job: str | None = Field(None, max_length=MAX_JOB_NAME)
    tags: dict[str, str] = Field(default_factory=dict, description="all must match")
    submitted_after: Instant | None = None
    submitted_before: Instant | None = None
    after: Count = Field(0, description="the cursor: a page's `cursor`, to continue after it")
    limit: int = Field(100, ge=1, le=MAX_PAGE)


class ActionPage(Model):
    """One page of a listing."""

    actions: list[ActionStatus]
    cursor: int | None = Field(
        description="pass as `after` for the next page; None when there is no more")


# What a stage change was, as the event log names it: the move that starts an attempt, the
# ones that queue an action again (stopped for higher-priority work, or after its attempt
# was lost or failed) and a quarantine are told apart from a plain stage change.
StageKind = Literal["accepted", "stage", "assigned", "preempted", "rescheduled",
                    "quarantined"]
# What else the event log records: a running attempt's priority moved by the quota pass
# (down: demoted, up: promoted), agents joining, leaving, going silent and coming back,
# drained and opened again, the scheduler starting (after a restart, with what it took
# back), a pool config applied, groups blocked or unblocked by hand, and jobs dispatched.
PoolKind = Literal["demoted", "promoted", "agent_joined", "agent_left", "agent_suspect",
                   "agent_back", "agent_drained", "agent_undrained", "scheduler_started",
                   "pool_applied", "group_blocked", "group_unblocked", "dispatched"]
EventKind = StageKind | PoolKind
EVENT_KINDS: tuple[str, ...] = (*get_args(StageKind), *get_args(PoolKind))


class StageEvent(Model):
    """One stage change of one action; `seq` orders an action's events from 1."""

    seq: int
    action_id: ActionId
    attempt: int
    stage: Stage
    time: float
    agent_id: AgentId | None = None
    exit_code: int | None = None
    reason: str = ""
    kind: StageKind = "stage"


class MeshEvent(Model):
    """One entry of the mesh's durable event log. `seq` orders the whole log from 1 and is
    never reused, so a reader continues after the last one it saw, across restarts; it is
    0 on an event the store has not written yet."""

    seq: int = 0
    time: float
    kind: EventKind
    action_id: ActionId | None = None
    attempt: int | None = None
    stage: Stage | None = None
    agent_id: AgentId | None = None
    exit_code: int | None = None
    priority: int | None = None
    reason: str = ""


class EventQuery(Model):
    """Which entries of the event log to read, after a point, in log order."""

    after: Count = Field(0, description="the last seq already seen: the page starts after it")
    action_id: ActionId | None = Field(None, min_length=1, max_length=256)
    agent_id: AgentId | None = Field(None, min_length=1, max_length=256)
    kinds: frozenset[EventKind] = Field(frozenset(), description="empty: every kind")
    since: Instant | None = Field(None, description="only events at or after this time")
    limit: int = Field(1000, ge=1, le=MAX_PAGE)


class EventPage(Model):
    """A page of the event log; pass `last` as `after` to read on. `first` is the oldest
    seq still kept: a reader whose `after` is below `first - 1` missed events that
    retention deleted."""

    events: list[MeshEvent]
    last: int
    first: int


class FollowedEvents(Model):
    """An action's stage changes after a point, and its status once they end it."""

    events: list[StageEvent]
    final: ActionStatus | None = None


class SubmitOutcome(Model):
    """The answer for one action of a submitted batch (its status is one `get` away: a
    batch of thousands is answered without building and sending thousands of them)."""

    action_id: ActionId
    accepted: bool
    created: bool = Field(description="false when the id was already known (idempotent resubmit)")
    reason: str = ""


Stream = Literal["stdout", "stderr"]


class LogBatch(Model):
    """Consecutive lines of one stream of one attempt, starting at line `offset`.

    Offsets count the attempt's lines across both streams, in the order the agent read them.
    """

    action_id: ActionId
    attempt: AttemptNumber
    stream: Stream
    offset: Count
    # One string rather than a list: a batch of thousands of lines crosses Ray as one
    # buffer, not as thousands of pickled strings (that was most of what moving a long log
    # cost the agent, the relay and the client).
    text: str = Field(description="the lines, each ended by a newline")
    count: Count = Field(description="how many lines: the newlines in `text`")

    @model_validator(mode="after")
    def _whole_lines(self) -> LogBatch:
        if self.text.count("\n") != self.count or self.text[-1:] not in ("", "\n"):
            raise ValueError(f"text must be {self.count} line(s), each ended by a newline")
        return self

    @classmethod
    def of(cls, action_id: ActionId, attempt: int, stream: Stream, offset: int,
           lines: list[str]) -> LogBatch:
        """A batch of these lines (none may hold a newline)."""
        return cls(action_id=action_id, attempt=attempt, stream=stream, offset=offset,
                   text="".join(line + "\n" for line in lines), count=len(lines))

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")[:-1]


@dataclass(frozen=True, slots=True)
class LogSource:
    """What the lines of one batch share: whose output they are, and from which stream."""

    action_id: ActionId
    attempt: int
    stream: Stream
    # Not lines of the action's: a note that this many lines are lost (on stderr).
    lost: int = 0


@dataclass(slots=True)
class LogLine:
    """One line as the client hands it out, cut from a validated LogBatch.

    A plain slotted dataclass rather than a model: a client may iterate a million of these
    a second, and building a pydantic model per line costs 2.5 us against 0.3 us. What the
    lines of a batch share is one `LogSource`, so that building a line sets three fields,
    not six: 0.3 us a line less, which was a third of what following a long log cost the
    client. Not frozen either: a frozen dataclass's `__init__` sets each field through
    `object.__setattr__`, three times the cost.
    """

    source: LogSource
    offset: int
    text: str

    @property
    def action_id(self) -> ActionId:
        return self.source.action_id

    @property
    def attempt(self) -> int:
        return self.source.attempt

    @property
    def stream(self) -> Stream:
        return self.source.stream

    @property
    def lost(self) -> int:
        """Not 0: this is a note that this many lines from `offset` on are lost (`text`
        says so in words)."""
        return self.source.lost


class LogRead(Model):
    """An answer from the log relay: batches from the asked offset, and whether more may come."""

    batches: list[LogBatch]
    next_offset: int
    closed: bool = Field(description="the attempt has ended and every line has been returned")
    gaps: list[tuple[int, int]] = Field(
        default_factory=list, description="ranges [start, end) of lines in this window that "
        "will never come (lost pushes, or lines a crashed relay held only in memory)")
    dropped: str = Field("", description="why the log is gone, when it is")

    def in_order(self, told: set[int]) -> Iterator[LogBatch | tuple[int, int]]:
        """The batches and the gaps, in order of offset; a gap already in `told` (by where
        it starts: a later read may report it again) is left out, a new one added to it."""
        gaps = [g for g in self.gaps if g[0] not in told]
        told.update(g[0] for g in gaps)
        for batch in self.batches:
            while gaps and gaps[0][0] < batch.offset:
                yield gaps.pop(0)
            yield batch
        yield from gaps


PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
# Retention looks for expired history at least this often (s), and at least this many times
# per retention period.
EXPIRE_INTERVAL = 60.0
EXPIRE_SHARE = 20
EXPIRE_FLOOR = 1.0


class GatewayConfig(Model):
    """The gRPC gateway on the head: where it listens and the token callers must send."""

    port: int = Field(..., ge=0, le=65535, description="TCP port; 0 picks a free one")
    host: str = Field("0.0.0.0", min_length=1, max_length=255,
                      description="the address it listens on (0.0.0.0: every interface)")
    token_file: str | None = Field(
        None, description="a file on the head holding the token callers send as "
        "`authorization: Bearer <token>` (read again when the gateway restarts)")
    token: SecretStr | None = Field(
        None, description="the token itself, when not in a file (`mesh up` takes it from "
        "ACTIONMESH_GRPC_TOKEN)")
    max_streams: int = Field(
        500, ge=1, le=900,
        description="most Submit and Watch streams open at once; past it a new one is "
        "refused with RESOURCE_EXHAUSTED (each holds a waiting call on the scheduler, which "
        "takes 1,000 at once)")
    cert: str | None = Field(None, description="PEM certificate to serve TLS with")
    key: str | None = Field(None, description="PEM private key of cert")

    @field_validator("token_file", "cert", "key")
    @classmethod
    def _paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_path(value, str(info.field_name))

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_token(value.get_secret_value(), "token")
        return value

    @model_validator(mode="after")
    def _complete(self) -> GatewayConfig:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("token_file or token (ACTIONMESH_GRPC_TOKEN): give exactly one; "
                             "the gateway serves no caller without a token")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key: give both (TLS) or neither")
        return self


def check_token(value: str, what: str) -> str:
    """A bearer token: long enough not to be guessed, and sendable as a metadata value."""
    if len(value) < MIN_TOKEN or len(value) > MAX_TOKEN:
        raise ValueError(f"{what} must be {MIN_TOKEN} to {MAX_TOKEN} characters")
    if not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError(f"{what} must be printable ASCII without spaces")
    return value


class MeshConfig(Model):
    """Tuning shared by the scheduler, the agents and the relay; set at `mesh up`."""

    state_dir: str = Field(default_factory=default_state_dir,
                           description="where the head keeps logs and state (made 0700; one "
                           "that is a symlink, another user's or writable by others is refused)")
    load_interval: PositiveSeconds = Field(0.5, description="seconds between load samples")
    load_stale_after: PositiveSeconds = Field(
        12.0, description="a load report older than this counts as no room (an agent whose "
        "load does not change re-sends it every load_heartbeat)"
    )
    node_check_interval: PositiveSeconds = Field(1.0, description="seconds between node checks")
    kill_grace: PositiveSeconds = Field(5.0, description="seconds between TERM and KILL")
    log_flush_interval: PositiveSeconds = Field(0.1, description="longest a line waits to ship")
    running_report_delay: float = Field(
        0.02, ge=0, le=10,
        description="an attempt that ends sooner than this after it started sends only its "
        "end report (which implies the start); 0 reports every start at once")
    log_flush_bytes: int = Field(256 * 1024, ge=1024, le=MAX_BYTES)
    relay_memory_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024, le=MAX_BYTES)
    capacity_percent: float = Field(100.0, gt=0, le=1000)
    cpu_busy_percent: float = Field(
        95.0, gt=0, le=100, description="no CPU work for an agent whose machine is this busy")
    backlog_turnover: float = Field(
        0.25, ge=0, le=3600,
        description="an agent whose latest attempts each ended within this many seconds of "
        "being assigned is handed, while work waits, up to backlog_depth more attempts per "
        "CPU ahead of a free slot, to start as soon as one frees (bursts of short actions "
        "keep its CPUs busy); 0: never")
    backlog_depth: float = Field(
        3.0, ge=1, le=16,
        description="attempts per CPU a fast agent may hold ahead of its free slots: enough "
        "to keep its CPUs busy while its end reports gather (report_linger) and travel")
    report_linger: float = Field(
        0.003, ge=0, le=1,
        description="while an agent holds started work for its next free slot (so no slot "
        "waits on the answer), its end reports wait up to this many seconds to go to the "
        "scheduler together; 0: each at once")
    head_agent: bool = Field(True, description="run an agent on the head node too")
    log_dir: str | None = Field(
        None, description="where the relay keeps logs (default: <state_dir>/logs); on a disk "
        "of their own, a flood of output cannot fill the disk the state is written to")
    log_budget: int | None = Field(
        None, ge=1 << 20, le=MAX_BYTES,
        description="bytes of disk the relay's logs may take (e.g. 20G); past it, the logs "
        "of the actions that finished first go. Default: a quarter of the space free where "
        "the logs are when the relay starts")
    retention: float = Field(
        7 * 86400.0, ge=1, le=10 * 365 * 86400,
        description="how long finished actions, their events and their logs are kept "
        "(seconds, or a duration such as 7d)")
    workspace_dir: str | None = Field(
        None, description="where agents make their attempts' private working directories, "
        "each agent in a directory of its own (default: actionmesh-work-<uid> in the "
        "system's temporary directory)")
    keep_workspaces: bool = Field(
        False, description="keep each attempt's directory after it ends, for debugging (an "
        "agent that starts again still clears what an earlier one left)")
    run_as: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$",
        description="the user agents run actions as (uid, gid and groups set before exec), so "
        "that they cannot read what the agent's user can (Ray's token among it); needs "
        "agents that can switch users (root). Default: the agent's own user")
    cgroups: bool = Field(
        True, description="put each attempt in a control group of its own where the machine "
        "offers one the agent may write (for kill, memory and pids limits); else its process "
        "group alone contains it")
    memory_headroom: float = Field(
        0.0, ge=0, le=100,
        description="an attempt's memory limit is its memory request times 1 + this (an "
        "action that requests no memory gets no limit)")
    pids_max: int = Field(
        4096, ge=0, le=1 << 22,
        description="most processes and threads one attempt may have at once; 0: no limit")
    link: Literal["stream", "ray"] = Field(
        "stream", description="how agents and the scheduler talk: a gRPC stream per agent "
        "(Ray calls only while it cannot open), or Ray calls alone")
    link_port: int = Field(
        0, ge=0, le=65535,
        description="TCP port on the head for the agents' streams; 0 picks a free one (set "
        "one where a firewall sits between the nodes)")
    link_cert: str | None = Field(
        None, description="PEM certificate the head serves the agents' streams with (TLS); "
        "agents trust the certificates in this file: a self-signed one, or a chain that "
        "ends in its root")
    link_key: str | None = Field(None, description="PEM private key of link_cert")
    link_server_name: str | None = Field(
        None, max_length=255,
        description="the name agents expect in link_cert (default: the head's address)")
    gateway: GatewayConfig | None = Field(
        None, description="serve the gRPC gateway on the head (off when unset)")
    pool_config: str | None = Field(
        None, description="a pool config file on the head (`mesh up --pool-config`): applied "
        "when the scheduler starts and whenever it changes; a bad edit is refused and logged, "
        "and the config in force stays")
    http_port: int | None = Field(
        None, ge=0, le=65535, description="serve the dispatcher's HTTP endpoint on this port "
        "of the head (GET /assignment?job=NAME, GET /event?dispatch=true); off when unset")
    http_host: str = Field("127.0.0.1", min_length=1, max_length=255,
                           description="the address the HTTP endpoint listens on")
    load_heartbeat: PositiveSeconds = Field(
        5.0, description="an agent whose load has not changed much re-sends it this often "
        "(an idle fleet's cost to the scheduler); must be below load_stale_after")

    @property
    def logs(self) -> str:
        return self.log_dir or str(Path(self.state_dir) / "logs")

    @property
    def expire_every(self) -> float:
        """How often the scheduler and the relay look for what retention deletes: what waits
        for a look is kept past its time, so a short retention looks more often."""
        return max(EXPIRE_FLOOR, min(EXPIRE_INTERVAL, self.retention / EXPIRE_SHARE))

    @field_validator("state_dir", "log_dir", "workspace_dir", "link_cert", "link_key",
                     "pool_config")
    @classmethod
    def _paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_path(value, str(info.field_name))

    @model_validator(mode="after")
    def _link(self) -> MeshConfig:
        if (self.link_cert is None) != (self.link_key is None):
            raise ValueError("link_cert and link_key: give both (TLS) or neither")
        if self.load_heartbeat >= self.load_stale_after:
            raise ValueError(f"load_heartbeat ({self.load_heartbeat:g}s) must be below "
                             f"load_stale_after ({self.load_stale_after:g}s), or every "
                             "quiet agent would look stale")
        return self

    @field_validator("log_budget", mode="before")
    @classmethod
    def _log_budget(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value)

    @field_validator("retention", mode="before")
    @classmethod
    def _retention(cls, value: Any) -> float:
        return parse_duration(value)

