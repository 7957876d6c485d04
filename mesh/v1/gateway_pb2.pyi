from google.protobuf import field_mask_pb2 as _field_mask_pb2
from mesh.v1 import link_pb2 as _link_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_QUEUED: _ClassVar[Stage]
    STAGE_ASSIGNED: _ClassVar[Stage]
    STAGE_RUNNING: _ClassVar[Stage]
    STAGE_SUCCEEDED: _ClassVar[Stage]
    STAGE_FAILED: _ClassVar[Stage]
    STAGE_TIMED_OUT: _ClassVar[Stage]
    STAGE_CANCELLED: _ClassVar[Stage]

class AttemptOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTEMPT_OUTCOME_UNSPECIFIED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_SUCCEEDED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_FAILED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_TIMED_OUT: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_CANCELLED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_LOST: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_PREEMPTED: _ClassVar[AttemptOutcome]

class LogStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_STREAM_UNSPECIFIED: _ClassVar[LogStream]
    LOG_STREAM_STDOUT: _ClassVar[LogStream]
    LOG_STREAM_STDERR: _ClassVar[LogStream]

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_ALIVE: _ClassVar[AgentState]
    AGENT_STATE_SUSPECT: _ClassVar[AgentState]
    AGENT_STATE_DRAINING: _ClassVar[AgentState]
    AGENT_STATE_BLOCKED: _ClassVar[AgentState]
    AGENT_STATE_DEAD: _ClassVar[AgentState]
    AGENT_STATE_DRAINED: _ClassVar[AgentState]

class AgentLinkKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_LINK_KIND_UNSPECIFIED: _ClassVar[AgentLinkKind]
    AGENT_LINK_KIND_STREAM: _ClassVar[AgentLinkKind]
    AGENT_LINK_KIND_RAY: _ClassVar[AgentLinkKind]
STAGE_UNSPECIFIED: Stage
STAGE_QUEUED: Stage
STAGE_ASSIGNED: Stage
STAGE_RUNNING: Stage
STAGE_SUCCEEDED: Stage
STAGE_FAILED: Stage
STAGE_TIMED_OUT: Stage
STAGE_CANCELLED: Stage
ATTEMPT_OUTCOME_UNSPECIFIED: AttemptOutcome
ATTEMPT_OUTCOME_SUCCEEDED: AttemptOutcome
ATTEMPT_OUTCOME_FAILED: AttemptOutcome
ATTEMPT_OUTCOME_TIMED_OUT: AttemptOutcome
ATTEMPT_OUTCOME_CANCELLED: AttemptOutcome
ATTEMPT_OUTCOME_LOST: AttemptOutcome
ATTEMPT_OUTCOME_PREEMPTED: AttemptOutcome
LOG_STREAM_UNSPECIFIED: LogStream
LOG_STREAM_STDOUT: LogStream
LOG_STREAM_STDERR: LogStream
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_ALIVE: AgentState
AGENT_STATE_SUSPECT: AgentState
AGENT_STATE_DRAINING: AgentState
AGENT_STATE_BLOCKED: AgentState
AGENT_STATE_DEAD: AgentState
AGENT_STATE_DRAINED: AgentState
AGENT_LINK_KIND_UNSPECIFIED: AgentLinkKind
AGENT_LINK_KIND_STREAM: AgentLinkKind
AGENT_LINK_KIND_RAY: AgentLinkKind

class SubmitRequest(_message.Message):
    __slots__ = ("action", "allow_unplaceable", "without_logs")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNPLACEABLE_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_LOGS_FIELD_NUMBER: _ClassVar[int]
    action: _link_pb2.Action
    allow_unplaceable: bool
    without_logs: bool
    def __init__(self, action: _Optional[_Union[_link_pb2.Action, _Mapping]] = ..., allow_unplaceable: _Optional[bool] = ..., without_logs: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("action_id", "after_seq", "attempt", "from_offset", "without_logs")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_LOGS_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    after_seq: int
    attempt: int
    from_offset: int
    without_logs: bool
    def __init__(self, action_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., attempt: _Optional[int] = ..., from_offset: _Optional[int] = ..., without_logs: _Optional[bool] = ...) -> None: ...

class ActionEvent(_message.Message):
    __slots__ = ("stage", "log", "result")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    stage: StageChange
    log: LogChunk
    result: ActionStatus
    def __init__(self, stage: _Optional[_Union[StageChange, _Mapping]] = ..., log: _Optional[_Union[LogChunk, _Mapping]] = ..., result: _Optional[_Union[ActionStatus, _Mapping]] = ...) -> None: ...

class StageChange(_message.Message):
    __slots__ = ("seq", "action_id", "attempt", "stage", "time", "agent_id", "exit_code", "reason")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    action_id: str
    attempt: int
    stage: Stage
    time: float
    agent_id: str
    exit_code: int
    reason: str
    def __init__(self, seq: _Optional[int] = ..., action_id: _Optional[str] = ..., attempt: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., time: _Optional[float] = ..., agent_id: _Optional[str] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("action_id", "attempt", "stream", "offset", "lines", "lost")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    attempt: int
    stream: LogStream
    offset: int
    lines: _containers.RepeatedScalarFieldContainer[str]
    lost: int
    def __init__(self, action_id: _Optional[str] = ..., attempt: _Optional[int] = ..., stream: _Optional[_Union[LogStream, str]] = ..., offset: _Optional[int] = ..., lines: _Optional[_Iterable[str]] = ..., lost: _Optional[int] = ...) -> None: ...

class ActionRef(_message.Message):
    __slots__ = ("action_id",)
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    def __init__(self, action_id: _Optional[str] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("agent_id", "check", "detail", "requested", "available")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    check: str
    detail: str
    requested: float
    available: float
    def __init__(self, agent_id: _Optional[str] = ..., check: _Optional[str] = ..., detail: _Optional[str] = ..., requested: _Optional[float] = ..., available: _Optional[float] = ...) -> None: ...

class PendingReason(_message.Message):
    __slots__ = ("summary", "unplaceable", "rejections", "priority", "quota")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    UNPLACEABLE_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    summary: str
    unplaceable: bool
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    priority: int
    quota: str
    def __init__(self, summary: _Optional[str] = ..., unplaceable: _Optional[bool] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., priority: _Optional[int] = ..., quota: _Optional[str] = ...) -> None: ...

class AttemptRecord(_message.Message):
    __slots__ = ("number", "agent_id", "agent_started_at", "assigned_at", "started_at", "finished_at", "outcome", "priority", "exit_code", "reason")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    number: int
    agent_id: str
    agent_started_at: float
    assigned_at: float
    started_at: float
    finished_at: float
    outcome: AttemptOutcome
    priority: int
    exit_code: int
    reason: str
    def __init__(self, number: _Optional[int] = ..., agent_id: _Optional[str] = ..., agent_started_at: _Optional[float] = ..., assigned_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., outcome: _Optional[_Union[AttemptOutcome, str]] = ..., priority: _Optional[int] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ActionStatus(_message.Message):
    __slots__ = ("id", "action", "stage", "attempt", "agent_id", "submitted_at", "finished_at", "exit_code", "reason", "pending", "attempts")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: _link_pb2.Action
    stage: Stage
    attempt: int
    agent_id: str
    submitted_at: float
    finished_at: float
    exit_code: int
    reason: str
    pending: PendingReason
    attempts: _containers.RepeatedCompositeFieldContainer[AttemptRecord]
    def __init__(self, id: _Optional[str] = ..., action: _Optional[_Union[_link_pb2.Action, _Mapping]] = ..., stage: _Optional[_Union[Stage, str]] = ..., attempt: _Optional[int] = ..., agent_id: _Optional[str] = ..., submitted_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., pending: _Optional[_Union[PendingReason, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[AttemptRecord, _Mapping]]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("stage", "account", "job", "tags", "submitted_after", "submitted_before", "page_token", "page_size")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    account: str
    job: str
    tags: _containers.ScalarMap[str, str]
    submitted_after: float
    submitted_before: float
    page_token: int
    page_size: int
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., account: _Optional[str] = ..., job: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., submitted_after: _Optional[float] = ..., submitted_before: _Optional[float] = ..., page_token: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("actions", "next_page_token")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[ActionStatus]
    next_page_token: int
    def __init__(self, actions: _Optional[_Iterable[_Union[ActionStatus, _Mapping]]] = ..., next_page_token: _Optional[int] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "node_id", "hostname", "address", "labels", "cpus", "memory", "pid", "started_at", "runs_as", "containment")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    RUNS_AS_FIELD_NUMBER: _ClassVar[int]
    CONTAINMENT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    node_id: str
    hostname: str
    address: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    cpus: float
    memory: int
    pid: int
    started_at: float
    runs_as: str
    containment: str
    def __init__(self, agent_id: _Optional[str] = ..., node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., address: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., cpus: _Optional[float] = ..., memory: _Optional[int] = ..., pid: _Optional[int] = ..., started_at: _Optional[float] = ..., runs_as: _Optional[str] = ..., containment: _Optional[str] = ...) -> None: ...

class RunningAttempt(_message.Message):
    __slots__ = ("action_id", "attempt", "stage", "cpus", "memory")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    attempt: int
    stage: Stage
    cpus: float
    memory: int
    def __init__(self, action_id: _Optional[str] = ..., attempt: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., cpus: _Optional[float] = ..., memory: _Optional[int] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("info", "state", "capacity_percent", "load", "load_age", "reserved_cpus", "reserved_memory", "running", "link", "link_since")
    INFO_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LOAD_AGE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_CPUS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    LINK_SINCE_FIELD_NUMBER: _ClassVar[int]
    info: AgentInfo
    state: AgentState
    capacity_percent: float
    load: _link_pb2.Load
    load_age: float
    reserved_cpus: float
    reserved_memory: int
    running: _containers.RepeatedCompositeFieldContainer[RunningAttempt]
    link: AgentLinkKind
    link_since: float
    def __init__(self, info: _Optional[_Union[AgentInfo, _Mapping]] = ..., state: _Optional[_Union[AgentState, str]] = ..., capacity_percent: _Optional[float] = ..., load: _Optional[_Union[_link_pb2.Load, _Mapping]] = ..., load_age: _Optional[float] = ..., reserved_cpus: _Optional[float] = ..., reserved_memory: _Optional[int] = ..., running: _Optional[_Iterable[_Union[RunningAttempt, _Mapping]]] = ..., link: _Optional[_Union[AgentLinkKind, str]] = ..., link_since: _Optional[float] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ...) -> None: ...

class AccountConfig(_message.Message):
    __slots__ = ("charge_rate", "max_charge_seconds", "max_fanout", "per_label_task_limits", "disable_free_tasks", "description")
    class PerLabelTaskLimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CHARGE_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_FANOUT_FIELD_NUMBER: _ClassVar[int]
    PER_LABEL_TASK_LIMITS_FIELD_NUMBER: _ClassVar[int]
    DISABLE_FREE_TASKS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    charge_rate: _containers.RepeatedScalarFieldContainer[float]
    max_charge_seconds: float
    max_fanout: int
    per_label_task_limits: _containers.ScalarMap[str, int]
    disable_free_tasks: bool
    description: str
    def __init__(self, charge_rate: _Optional[_Iterable[float]] = ..., max_charge_seconds: _Optional[float] = ..., max_fanout: _Optional[int] = ..., per_label_task_limits: _Optional[_Mapping[str, int]] = ..., disable_free_tasks: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class AccountStatus(_message.Message):
    __slots__ = ("id", "config", "balance", "running", "running_cpus", "running_by_priority", "queued_by_priority")
    class RunningByPriorityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class QueuedByPriorityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_CPUS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_BY_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_BY_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    config: AccountConfig
    balance: _containers.RepeatedScalarFieldContainer[float]
    running: int
    running_cpus: float
    running_by_priority: _containers.ScalarMap[int, int]
    queued_by_priority: _containers.ScalarMap[int, int]
    def __init__(self, id: _Optional[str] = ..., config: _Optional[_Union[AccountConfig, _Mapping]] = ..., balance: _Optional[_Iterable[float]] = ..., running: _Optional[int] = ..., running_cpus: _Optional[float] = ..., running_by_priority: _Optional[_Mapping[int, int]] = ..., queued_by_priority: _Optional[_Mapping[int, int]] = ...) -> None: ...

class AccountRef(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class CreateAccountRequest(_message.Message):
    __slots__ = ("account_id", "config")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    config: AccountConfig
    def __init__(self, account_id: _Optional[str] = ..., config: _Optional[_Union[AccountConfig, _Mapping]] = ...) -> None: ...

class ModifyAccountRequest(_message.Message):
    __slots__ = ("account_id", "config", "update_mask", "reset_balance")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    RESET_BALANCE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    config: AccountConfig
    update_mask: _field_mask_pb2.FieldMask
    reset_balance: bool
    def __init__(self, account_id: _Optional[str] = ..., config: _Optional[_Union[AccountConfig, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., reset_balance: _Optional[bool] = ...) -> None: ...

class DeleteAccountResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAccountsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAccountsResponse(_message.Message):
    __slots__ = ("accounts",)
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[AccountStatus]
    def __init__(self, accounts: _Optional[_Iterable[_Union[AccountStatus, _Mapping]]] = ...) -> None: ...
