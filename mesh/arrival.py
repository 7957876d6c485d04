"""Models and ids that arrive over Ray or a channel, validated where they land: Ray unpickles
a pydantic model without validating it (as `model_construct` makes one), so a peer could
hand any actor an action asking for -100 CPUs.

The calls on every action's way (`submit`, `wait_result`) carry models as JSON text
(`as_json`): validating JSON is what landing needs anyway, while a pickled model costs
several times as much to send and, unpickled, must be dumped and validated again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from mesh.errors import InvalidInput
from mesh.schema import MAX_JOB_NAME, check_id

M = TypeVar("M", bound=BaseModel)


def arrived(kind: type[M], value: Any, what: str, context: dict[str, Any] | None = None,
            ) -> M:
    """`value` (a model, its fields or its JSON text) validated as `kind` (with the
    validation `context`, e.g. STORED); InvalidInput naming the field."""
    try:
        if isinstance(value, str | bytes):
            return kind.model_validate_json(value, context=context)
        if isinstance(value, BaseModel):
            # From its fields, deeply: a nested model instance would otherwise be taken as
            # it is, unvalidated.
            return kind.model_validate(value.model_dump(), context=context)
        return kind.model_validate(value, context=context)
    except ValidationError as exc:
        raise InvalidInput.from_validation(what, exc) from None


def arrived_changes(kind: type[M], value: Any, what: str) -> M | dict[str, Any]:
    """Changes to a config: the fields to change by name (each checked once merged with
    the config in force), or a whole new config, validated here."""
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return value
    if isinstance(value, BaseModel):
        return arrived(kind, value, what)
    raise InvalidInput(f"{what}: expected a mapping of field names to values, got "
                       f"{type(value).__name__}", [(what, "not a mapping")])


def arrived_list(kind: type[M], text: Any, what: str) -> list[M]:
    """A JSON array of `kind` (as `as_json` writes a sequence) validated; InvalidInput
    naming the item and field otherwise."""
    try:
        return _list_of(kind).validate_json(text)
    except ValidationError as exc:
        raise InvalidInput.from_validation(what, exc) from None


def as_json(value: BaseModel | Sequence[BaseModel]) -> str:
    """A model, or a sequence of them, as the JSON text `arrived` / `arrived_list` read."""
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return "[" + ",".join(item.model_dump_json() for item in value) + "]"


@functools.cache
def _list_of(kind: type[M]) -> TypeAdapter[list[M]]:
    return TypeAdapter(list[kind])  # type: ignore[valid-type]


def arrived_id(value: Any, what: str) -> str:
    """An id (action, account) as the schema spells them; InvalidInput otherwise."""
    try:
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string, got {type(value).__name__}")
        return check_id(value, what)
    except ValueError as exc:
        raise InvalidInput(f"{what}: {exc}", [(what, str(exc))]) from None


def arrived_flag(value: Any, what: str) -> bool:
    """True or false, and nothing else; InvalidInput otherwise."""
    if not isinstance(value, bool):
        raise InvalidInput(f"{what}: expected true or false", [(what, repr(value)[:80])])
    return value


def arrived_job(value: Any) -> str:
    """A job's name, as an action gives it; InvalidInput otherwise."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_JOB_NAME:
        raise InvalidInput(f"job: expected a job name (1 to {MAX_JOB_NAME} characters)",
                           [("job", repr(value)[:80])])
    return value


def arrived_count(value: Any, what: str, least: int = 0) -> int:
    """A whole number >= `least` (attempt numbers, offsets); InvalidInput otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidInput(f"{what} must be an integer >= {least}, got {repr(value)[:80]}",
                           [(what, f"not an integer >= {least}")])
    return value


def arrived_seconds(value: Any, what: str) -> float:
    """A number of seconds (a wait, a timeout; the caller bounds it); InvalidInput if it is
    not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidInput(f"{what} must be a number of seconds, got {value!r}",
                           [(what, "not a number")])
    return float(value)
