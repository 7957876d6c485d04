"""How the store's records map to SQLite rows and back: the statements, and a row's codec."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from mesh.errors import StateCorrupt
from mesh.schema import (
    AccountConfig,
    AccountId,
    Action,
    ActionId,
    AgentId,
    AttemptRecord,
    MeshEvent,
    StageEvent,
)
from mesh.stages import TERMINAL, Stage
from scheduler.core.quota.snapshot import QuotaSnapshot
from scheduler.core.records import ActionRecord, SavedSpec
from scheduler.sealing import Sealer, SealError

# The fields that place an action are columns of their own, so a restart queues its waiting
# actions without parsing their specs. Label lists are kept space-separated (a label cannot
# hold a space).
SHAPE_COLUMNS = ("account", "labels", "provisionable_labels", "cpus", "memory", "job")
ACTION_COLUMNS = ("stage, attempt, finished_at, exit_code, reason, failures, losses, deaths, "
                  "cancel_requested, unplaceable, floor, events")
UPDATE = """UPDATE actions SET stage=?, attempt=?, finished_at=?, exit_code=?, reason=?,
    failures=?, losses=?, deaths=?, cancel_requested=?, unplaceable=?, floor=?, events=?
    WHERE id=?"""
INSERT = f"""INSERT INTO actions ({ACTION_COLUMNS}, id, seq, spec, submitted_at,
    {", ".join(SHAPE_COLUMNS)}) VALUES ({", ".join("?" * 22)})"""
SELECT = (f"SELECT id, seq, spec, submitted_at, {ACTION_COLUMNS}, "
          f"{', '.join(SHAPE_COLUMNS)} FROM actions")
ATTEMPT = """INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# An entry of the event log: its seq is SQLite's to hand out. A stage event is known by its
# action and its number there, so writing it twice keeps one.
JOURNAL_COLUMNS = ("time, kind, action_id, action_seq, attempt, stage, agent_id, exit_code, "
                   "priority, reason")
INSERT_EVENT = (f"INSERT OR IGNORE INTO journal ({JOURNAL_COLUMNS}) "
                f"VALUES ({', '.join('?' * 10)})")
SELECT_JOURNAL = f"SELECT seq, {JOURNAL_COLUMNS} FROM journal"
SELECT_STAGE_EVENTS = ("SELECT action_id, action_seq, attempt, stage, time, agent_id, "
                       "exit_code, reason, kind FROM journal "
                       "WHERE action_id = ? AND action_seq IS NOT NULL ORDER BY action_seq")
log = logging.getLogger("actionmesh.scheduler")

# The one key of a saved spec's `secrets` when they are sealed (no variable has this name),
# and the text that shows a spec may have them.
SEALED_KEY = "sealed:v1"
_SEALED_MARK = f'"{SEALED_KEY}"'
# A saved balance: finite CPU-seconds per priority (checked only when a snapshot did not load).
_BALANCE = TypeAdapter(list[Annotated[float, Field(allow_inf_nan=False)]])
# The stage values of finished and of unfinished actions, as the `stage` column holds them.
ENDED = tuple(sorted(stage.value for stage in TERMINAL))
UNFINISHED = tuple(sorted(stage.value for stage in Stage if stage not in TERMINAL))
# Ids per query when reading attempts for many actions (well under SQLite's limit of 32,766).
CHUNK = 500


def action_row(r: ActionRecord) -> tuple[object, ...]:
    return (r.stage.value, r.attempt, r.finished_at, r.exit_code, r.reason, r.failures,
            r.losses, json.dumps(r.deaths_in_a_row), int(r.cancel_requested),
            int(r.unplaceable), r.floor, r.events, r.id)


def spec_text(spec: Action, sealer: Sealer) -> str:
    """The spec's JSON, its secrets sealed (`{"sealed:v1": ...}`, a key no variable can
    have): the rest stays JSON, so the store can still look into its tags."""
    if not spec.secrets:
        return spec.model_dump_json()
    fields = spec.model_dump(mode="json")
    assert spec.id is not None
    fields["secrets"] = {SEALED_KEY: sealer.seal(json.dumps(spec.secrets), spec.id)}
    return json.dumps(fields, separators=(",", ":"))


def opened_text(text: str, sealer: Sealer, action_id: str) -> str:
    """A saved spec's JSON with its secrets opened; SealError if this key cannot."""
    if _SEALED_MARK not in text:  # most specs: no parsing at all
        return text
    fields = json.loads(text)
    sealed = fields.get("secrets", {}).get(SEALED_KEY)
    if sealed is None:
        return text
    fields["secrets"] = json.loads(sealer.open_text(sealed, action_id))
    return json.dumps(fields, separators=(",", ":"))


def created_row(r: ActionRecord, sealer: Sealer) -> tuple[object, ...]:
    """The INSERT of a newly accepted action (its spec is always parsed: it was just sent)."""
    assert isinstance(r.spec, Action)
    return (*action_row(r), r.seq, spec_text(r.spec, sealer), r.submitted_at,
            *shape_row(r.spec))


def shape_row(spec: Action | SavedSpec) -> tuple[object, ...]:
    return (spec.account, " ".join(sorted(spec.labels)),
            " ".join(sorted(spec.provisionable_labels)), spec.cpus, spec.memory, spec.job)


def read_action(row: Any, sealer: Sealer) -> ActionRecord:
    (action_id, seq, spec, submitted_at, stage, attempt, finished_at, exit_code, reason,
     failures, losses, deaths, cancel_requested, unplaceable, floor, events, account, labels,
     provisionable_labels, cpus, memory, job) = row
    # Per row of ten thousand at a restart: the common values are looked up, not parsed.
    try:
        text = _opened(str(spec), sealer, action_id, stage)
        saved = SavedSpec(text, AccountId(account), _labels(labels),
                          _labels(provisionable_labels), float(cpus), int(memory), str(job))
        return ActionRecord(
            id=ActionId(action_id), seq=int(seq),
            # A spec is parsed when first needed (see SavedSpec), except for an action in
            # flight: its reports need its retry policy, so it is checked here and now.
            spec=saved.parse() if stage in _IN_FLIGHT else saved,
            submitted_at=float(submitted_at), stage=_STAGES[stage], attempt=int(attempt),
            finished_at=finished_at, exit_code=exit_code, reason=str(reason),
            failures=int(failures), losses=int(losses),
            deaths_in_a_row=() if deaths == "[]" else tuple(map(AgentId, json.loads(deaths))),
            cancel_requested=bool(cancel_requested), unplaceable=bool(unplaceable),
            floor=int(floor), events=int(events))
    except ValidationError as exc:
        # Not the error's text, nor chained: it would show the stored values, secrets too.
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "spec"
        raise StateCorrupt(f"saved action {action_id!r} cannot be read: {where}: "
                           f"{first['msg']} ({exc.error_count()} errors)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise StateCorrupt(f"saved action {action_id!r} cannot be read: {exc!s}") from exc


def _opened(text: str, sealer: Sealer, action_id: str, stage: str) -> str:
    try:
        return opened_text(text, sealer, action_id)
    except (SealError, ValueError, AttributeError) as exc:
        if stage in _IN_FLIGHT:
            raise StateCorrupt(f"saved action {action_id!r} cannot be read: {exc}") from None
        # Waiting or ended: its status says its spec cannot be read; a waiting one fails
        # alone when its turn comes, rather than run without its secrets. The secrets are
        # made a value no spec can have, so that it never parses as one.
        log.error("saved action %r: %s", action_id, exc)
        try:
            fields = json.loads(text)
            fields["secrets"] = f"sealed, and cannot be opened: {exc}"
            return json.dumps(fields)
        except (ValueError, TypeError):
            return text


_STAGES = {stage.value: stage for stage in Stage}
_IN_FLIGHT = (Stage.ASSIGNED.value, Stage.RUNNING.value)
_NO_LABELS: frozenset[str] = frozenset()


def _labels(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else _NO_LABELS


def attempt_row(action_id: ActionId, a: AttemptRecord) -> tuple[object, ...]:
    outcome = a.outcome.value if isinstance(a.outcome, Stage) else a.outcome
    return (action_id, a.number, a.agent_id, a.agent_started_at, a.assigned_at,
            a.started_at, a.finished_at, outcome, a.priority, a.exit_code, a.reason)


def read_attempt(row: Any) -> AttemptRecord:
    (action_id, number, agent_id, agent_started_at, assigned_at, started_at, finished_at,
     outcome, priority, exit_code, reason) = row
    try:
        return AttemptRecord(number=number, agent_id=agent_id,
                             agent_started_at=agent_started_at, assigned_at=assigned_at,
                             started_at=started_at, finished_at=finished_at,
                             outcome=outcome, priority=priority, exit_code=exit_code,
                             reason=reason)
    except ValidationError as exc:
        raise StateCorrupt(f"saved attempt {number} of action {action_id!r} cannot be read: "
                           f"{exc}") from exc


def event_row(e: StageEvent | MeshEvent) -> tuple[object, ...]:
    if isinstance(e, StageEvent):
        return (e.time, e.kind, e.action_id, e.seq, e.attempt, e.stage.value, e.agent_id,
                e.exit_code, None, e.reason)
    return (e.time, e.kind, e.action_id, None, e.attempt,
            e.stage.value if e.stage is not None else None, e.agent_id, e.exit_code,
            e.priority, e.reason)


def read_event(row: Any) -> StageEvent:
    action_id, seq, attempt, stage, time, agent_id, exit_code, reason, kind = row
    try:
        return StageEvent.model_validate({
            "action_id": action_id, "seq": seq, "attempt": attempt, "stage": stage,
            "time": time, "agent_id": agent_id, "exit_code": exit_code, "reason": reason,
            "kind": kind})
    except ValidationError as exc:
        raise StateCorrupt(f"saved event {seq} of action {action_id!r} cannot be read: "
                           f"{exc}") from exc


def read_entry(row: Any) -> MeshEvent:
    seq, time, kind, action_id, _, attempt, stage, agent_id, exit_code, priority, reason = row
    try:
        return MeshEvent.model_validate({
            "seq": seq, "time": time, "kind": kind, "action_id": action_id,
            "attempt": attempt, "stage": stage, "agent_id": agent_id,
            "exit_code": exit_code, "priority": priority, "reason": reason})
    except ValidationError as exc:
        raise StateCorrupt(f"saved entry {seq} of the event log cannot be read: {exc}",
                           ) from exc


def parse_quota(text: str, where: str) -> QuotaSnapshot:
    """The saved accounts. An account whose config or balance does not load (say a balance
    saved as null) is suspended, not the whole start-up stopped; anything else wrong with
    the snapshot is StateCorrupt."""
    try:
        return QuotaSnapshot.model_validate_json(text)
    except ValidationError as exc:
        salvaged = _suspend_bad_accounts(text, where)
        if salvaged is None:
            raise StateCorrupt(f"{where} is not a quota snapshot ({exc.error_count()} errors, "
                               f"first: {exc.errors()[0]['msg']}); move it away to start "
                               "without the saved accounts") from exc
        return salvaged


def _suspend_bad_accounts(text: str, where: str) -> QuotaSnapshot | None:
    """The snapshot with each account that does not load replaced by a suspended one (no
    earning, no free work, the reason in its description), or None if more than its
    accounts is wrong."""
    try:
        raw = json.loads(text)
        accounts, balances = raw["accounts"], raw["balances"]
        if not isinstance(accounts, dict) or not isinstance(balances, dict):
            return None
        for account_id in list(accounts):
            try:
                AccountConfig.model_validate(accounts[account_id])
                _BALANCE.validate_python(balances.get(account_id, []))
            except ValidationError as exc:
                problem = f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
                log.error("%s: account %r cannot be loaded (%s); it is suspended until it is "
                          "modified or created again", where, account_id, problem)
                accounts[account_id] = AccountConfig(
                    disable_free_tasks=True,
                    description=f"suspended: its saved config could not be loaded "
                                f"({problem})"[:1024]).model_dump()
                balances[account_id] = []
        return QuotaSnapshot.model_validate(raw)
    except (ValueError, TypeError, KeyError, ValidationError):
        return None

