from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_STAGE_UNSPECIFIED: _ClassVar[ReportStage]
    REPORT_STAGE_RUNNING: _ClassVar[ReportStage]
    REPORT_STAGE_SUCCEEDED: _ClassVar[ReportStage]
    REPORT_STAGE_FAILED: _ClassVar[ReportStage]
    REPORT_STAGE_TIMED_OUT: _ClassVar[ReportStage]
    REPORT_STAGE_CANCELLED: _ClassVar[ReportStage]
    REPORT_STAGE_REFUSED: _ClassVar[ReportStage]
    REPORT_STAGE_WITHDRAWN: _ClassVar[ReportStage]

class StopOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_OUTCOME_UNSPECIFIED: _ClassVar[StopOutcome]
    STOP_OUTCOME_STOPPED: _ClassVar[StopOutcome]
    STOP_OUTCOME_FINISHED: _ClassVar[StopOutcome]
    STOP_OUTCOME_UNKNOWN: _ClassVar[StopOutcome]
REPORT_STAGE_UNSPECIFIED: ReportStage
REPORT_STAGE_RUNNING: ReportStage
REPORT_STAGE_SUCCEEDED: ReportStage
REPORT_STAGE_FAILED: ReportStage
REPORT_STAGE_TIMED_OUT: ReportStage
REPORT_STAGE_CANCELLED: ReportStage
REPORT_STAGE_REFUSED: ReportStage
REPORT_STAGE_WITHDRAWN: ReportStage
STOP_OUTCOME_UNSPECIFIED: StopOutcome
STOP_OUTCOME_STOPPED: StopOutcome
STOP_OUTCOME_FINISHED: StopOutcome
STOP_OUTCOME_UNKNOWN: StopOutcome

class RetryPolicy(_message.Message):
    __slots__ = ("on_failure", "on_lost", "quarantine_after")
    ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    ON_LOST_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_AFTER_FIELD_NUMBER: _ClassVar[int]
    on_failure: int
    on_lost: int
    quarantine_after: int
    def __init__(self, on_failure: _Optional[int] = ..., on_lost: _Optional[int] = ..., quarantine_after: _Optional[int] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("id", "command", "shell", "env", "secrets", "cwd", "cpus", "memory", "labels", "provisionable_labels", "account", "job", "timeout", "retry", "tags")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SecretsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    SHELL_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROVISIONABLE_LABELS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    command: _containers.RepeatedScalarFieldContainer[str]
    shell: bool
    env: _containers.ScalarMap[str, str]
    secrets: _containers.ScalarMap[str, str]
    cwd: str
    cpus: float
    memory: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    provisionable_labels: _containers.RepeatedScalarFieldContainer[str]
    account: str
    job: str
    timeout: float
    retry: RetryPolicy
    tags: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., shell: _Optional[bool] = ..., env: _Optional[_Mapping[str, str]] = ..., secrets: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., cpus: _Optional[float] = ..., memory: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., provisionable_labels: _Optional[_Iterable[str]] = ..., account: _Optional[str] = ..., job: _Optional[str] = ..., timeout: _Optional[float] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("action_id", "attempt", "action", "assigned_at", "within_cpus")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_AT_FIELD_NUMBER: _ClassVar[int]
    WITHIN_CPUS_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    attempt: int
    action: Action
    assigned_at: float
    within_cpus: float
    def __init__(self, action_id: _Optional[str] = ..., attempt: _Optional[int] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., assigned_at: _Optional[float] = ..., within_cpus: _Optional[float] = ...) -> None: ...

class AttemptReport(_message.Message):
    __slots__ = ("action_id", "attempt", "stage", "time", "exit_code", "reason")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    attempt: int
    stage: ReportStage
    time: float
    exit_code: int
    reason: str
    def __init__(self, action_id: _Optional[str] = ..., attempt: _Optional[int] = ..., stage: _Optional[_Union[ReportStage, str]] = ..., time: _Optional[float] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Load(_message.Message):
    __slots__ = ("cpu_percent", "mesh_cpu_percent", "cpu_count", "memory_total", "memory_used", "memory_available", "load_avg", "sampled_at")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESH_CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    LOAD_AVG_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_AT_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    mesh_cpu_percent: float
    cpu_count: int
    memory_total: int
    memory_used: int
    memory_available: int
    load_avg: _containers.RepeatedScalarFieldContainer[float]
    sampled_at: float
    def __init__(self, cpu_percent: _Optional[float] = ..., mesh_cpu_percent: _Optional[float] = ..., cpu_count: _Optional[int] = ..., memory_total: _Optional[int] = ..., memory_used: _Optional[int] = ..., memory_available: _Optional[int] = ..., load_avg: _Optional[_Iterable[float]] = ..., sampled_at: _Optional[float] = ...) -> None: ...

class Stopped(_message.Message):
    __slots__ = ("action_id", "attempt", "outcome", "held_only")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    HELD_ONLY_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    attempt: int
    outcome: StopOutcome
    held_only: bool
    def __init__(self, action_id: _Optional[str] = ..., attempt: _Optional[int] = ..., outcome: _Optional[_Union[StopOutcome, str]] = ..., held_only: _Optional[bool] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("reports", "load", "stopped")
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[AttemptReport]
    load: Load
    stopped: _containers.RepeatedCompositeFieldContainer[Stopped]
    def __init__(self, reports: _Optional[_Iterable[_Union[AttemptReport, _Mapping]]] = ..., load: _Optional[_Union[Load, _Mapping]] = ..., stopped: _Optional[_Iterable[_Union[Stopped, _Mapping]]] = ...) -> None: ...

class ReportAnswer(_message.Message):
    __slots__ = ("assignments", "error", "recorded")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    error: str
    recorded: bool
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., error: _Optional[str] = ..., recorded: _Optional[bool] = ...) -> None: ...

class Stop(_message.Message):
    __slots__ = ("action_id", "attempt", "reason", "held_only")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HELD_ONLY_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    attempt: int
    reason: str
    held_only: bool
    def __init__(self, action_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ..., held_only: _Optional[bool] = ...) -> None: ...

class SchedulerMessage(_message.Message):
    __slots__ = ("answers", "assignments", "stops")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    STOPS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[ReportAnswer]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    stops: _containers.RepeatedCompositeFieldContainer[Stop]
    def __init__(self, answers: _Optional[_Iterable[_Union[ReportAnswer, _Mapping]]] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., stops: _Optional[_Iterable[_Union[Stop, _Mapping]]] = ...) -> None: ...
