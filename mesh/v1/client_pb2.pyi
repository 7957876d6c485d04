from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RunRequest(_message.Message):
    __slots__ = ("action", "reject_unplaceable", "wait")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REJECT_UNPLACEABLE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    action: str
    reject_unplaceable: bool
    wait: float
    def __init__(self, action: _Optional[str] = ..., reject_unplaceable: _Optional[bool] = ..., wait: _Optional[float] = ...) -> None: ...

class RunReply(_message.Message):
    __slots__ = ("outcome", "status")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    status: str
    def __init__(self, outcome: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class ResultRequest(_message.Message):
    __slots__ = ("action_id", "wait")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    wait: float
    def __init__(self, action_id: _Optional[str] = ..., wait: _Optional[float] = ...) -> None: ...

class ResultReply(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...
