"""Validation of outside input: bad fields get errors that name them and quote the value."""

from typing import Any

import pytest
from pydantic import ValidationError

from mesh.arrival import arrived, arrived_list, as_json
from mesh.errors import InvalidInput
from mesh.protocol import AttemptReport, HeldAttempt
from mesh.schema import (
    AccountConfig,
    Action,
    ActionId,
    Load,
    LogBatch,
    MeshConfig,
    SubmitOutcome,
    parse_duration,
    parse_size,
)

BAD_ACTIONS: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown field", {"command": ["true"], "colour": "red"}, "colour", "Extra inputs"),
    ("negative cpus", {"command": ["true"], "cpus": -1}, "cpus", "greater than or equal"),
    ("empty command", {"command": []}, "command", "at least 1"),
    ("blank command", {"command": ["  "]}, "command", "must not be empty"),
    ("malformed label", {"command": ["true"], "labels": ["has space"]}, "labels", "'has space'"),
    ("label with comma", {"command": ["true"], "labels": ["a,b"]}, "labels", "malformed label"),
    ("bad memory", {"command": ["true"], "memory": "lots"}, "memory", "'lots'"),
    ("negative memory", {"command": ["true"], "memory": -5}, "memory", "negative"),
    ("bad timeout", {"command": ["true"], "timeout": "soon"}, "timeout", "'soon'"),
    ("zero timeout", {"command": ["true"], "timeout": 0}, "timeout", "positive"),
    ("bad id", {"command": ["true"], "id": "no spaces"}, "id", "malformed action id"),
    ("bad account", {"command": ["true"], "account": "a b"}, "account", "malformed account"),
    ("bad env name", {"command": ["true"], "env": {"1X": "v"}}, "env", "'1X'"),
    ("shell with argv", {"command": ["a", "b"], "shell": True}, "", "one script string"),
    ("negative retries", {"command": ["true"], "retry": {"on_failure": -1}}, "retry.on_failure",
     "greater than or equal"),
    # Bounded input: what exec, the store or the channel could not take is refused here.
    ("NUL in argv", {"command": ["echo", "a\0b"]}, "command", "argument 1 holds a NUL byte"),
    ("NUL in env", {"command": ["true"], "env": {"A": "x\0y"}}, "env", "variable A holds a NUL"),
    ("NUL in cwd", {"command": ["true"], "cwd": "/tmp/\0x"}, "cwd", "NUL byte"),
    ("relative cwd", {"command": ["true"], "cwd": "build"}, "cwd", "absolute path"),
    ("long cwd", {"command": ["true"], "cwd": "/" + "d" * 5000}, "cwd", "longer than 4096"),
    ("one argument over exec's limit", {"command": ["echo", "x" * (200 * 1024)]}, "command",
     "most exec takes in one"),
    ("argv and env over exec's limit", {"command": ["echo"] + ["x" * 100_000] * 6,
                                        "env": {f"V{i}": "y" * 100_000 for i in range(6)}},
     "", "command, env and secrets take"),
    ("too large for a channel frame", {"command": ["echo"] + ["x" * 100_000] * 170}, "",
     "exec allows an action at most"),
    ("too many labels", {"command": ["true"], "labels": [f"l{i}" for i in range(300)]},
     "labels", "at most 256"),
    ("very long label", {"command": ["true"], "labels": ["x" * 300]}, "labels", "malformed"),
    ("too many tags", {"command": ["true"], "tags": {f"t{i}": "v" for i in range(300)}},
     "tags", "at most 256 tags"),
    ("very long tag", {"command": ["true"], "tags": {"k": "v" * 5000}}, "tags", "values at most"),
    ("infinite memory", {"command": ["true"], "memory": float("inf")}, "memory", "finite"),
    ("absurd memory", {"command": ["true"], "memory": "9999999T"}, "memory", "less than"),
    ("infinite timeout", {"command": ["true"], "timeout": float("inf")}, "timeout", "finite"),
    ("absurd timeout", {"command": ["true"], "timeout": "100000d"}, "timeout",
     "less than or equal"),
    ("NaN cpus", {"command": ["true"], "cpus": float("nan")}, "cpus", "finite"),
    ("bad secret name", {"command": ["true"], "secrets": {"A-B": "x"}}, "secrets", "'A-B'"),
    ("secret also in env", {"command": ["true"], "env": {"T": "1"}, "secrets": {"T": "2"}},
     "secrets", "in env and in secrets"),
    ("NUL in a secret", {"command": ["true"], "secrets": {"T": "a\0"}}, "secrets", "NUL"),
    ("absurd cpus", {"command": ["true"], "cpus": 1e9}, "cpus", "less than or equal"),
    # float() of 400 nines is infinite: an int() of it would escape as OverflowError.
    ("memory beyond a float", {"command": ["true"], "memory": "9" * 400}, "memory",
     "characters"),
    ("memory of the longest text", {"command": ["true"], "memory": "9" * 63 + "T"}, "memory",
     "less than"),
    ("memory as a huge int", {"command": ["true"], "memory": 10**400}, "memory", "less than"),
    # A long run of spaces or digits would make the patterns backtrack for minutes.
    ("padded memory", {"command": ["true"], "memory": "1" + " " * 30_000 + "x"}, "memory",
     "30,002 characters"),
    ("long timeout text", {"command": ["true"], "timeout": "1" * 12_000 + "x"}, "timeout",
     "12,001 characters"),
    ("timeout as a huge int", {"command": ["true"], "timeout": 10**400}, "timeout",
     "too large"),
    ("NaN timeout text", {"command": ["true"], "timeout": "nan"}, "timeout", "finite"),
]


@pytest.mark.parametrize(("fields", "field", "message"), [b[1:] for b in BAD_ACTIONS],
                         ids=[b[0] for b in BAD_ACTIONS])
def test_bad_action_names_the_field(fields: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        Action.model_validate(fields)
    err = InvalidInput.from_validation("action", info.value)
    assert message in str(err)
    if field:
        assert any(path == field for path, _ in err.errors), err.errors


SIZES = [("plain bytes", 100, 100), ("binary G", "2G", 2 * 2**30), ("GiB", "2GiB", 2 * 2**30),
         ("decimal GB", "2GB", 2 * 10**9), ("lower m", "512m", 512 * 2**20),
         ("fraction", "1.5K", 1536), ("zero", "0", 0)]


@pytest.mark.parametrize(("text", "expected"), [s[1:] for s in SIZES], ids=[s[0] for s in SIZES])
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


DURATIONS = [("number", 90, 90.0), ("seconds", "90s", 90.0), ("minutes", "30m", 1800.0),
             ("compound", "1h30m", 5400.0), ("millis", "250ms", 0.25), ("plain string", "12", 12.0)]


@pytest.mark.parametrize(("text", "expected"), [d[1:] for d in DURATIONS],
                         ids=[d[0] for d in DURATIONS])
def test_parse_duration(text: object, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


def test_labels_are_sorted_and_deduplicated() -> None:
    a = Action(command=["true"], labels=["vpn", "os:linux", "vpn"])
    assert a.labels == ["os:linux", "vpn"]


def test_action_round_trips_through_json() -> None:
    a = Action(command=["sh", "-c", "echo hi"], memory="1G", timeout="2m", labels=["os:linux"],
               env={"A": "1"}, tags={"k": "v"})
    assert Action.model_validate_json(a.model_dump_json()) == a


def test_config_refuses_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        MeshConfig.model_validate({"load_intervall": 1})


LOAD = {"cpu_percent": 97.0, "cpu_count": 2, "memory_total": 1, "memory_used": 0,
        "memory_available": 1, "sampled_at": 0.0}


def test_a_load_from_an_agent_that_does_not_measure_its_attempts_is_all_foreign() -> None:
    load = Load.model_validate(LOAD)
    assert load.mesh_cpu_percent == 0 and load.foreign_cpu_percent == 97


@pytest.mark.parametrize(("mesh", "foreign"), [(90.0, 7.0), (97.0, 0.0), (99.0, 0.0)],
                         ids=["part ours", "all ours", "ours measured above the total"])
def test_the_foreign_share_is_what_the_attempts_do_not_explain(mesh: float,
                                                                 foreign: float) -> None:
    load = Load.model_validate({**LOAD, "mesh_cpu_percent": mesh})
    assert load.foreign_cpu_percent == pytest.approx(foreign)


def test_the_attempts_share_is_a_percentage() -> None:
    with pytest.raises(ValidationError, match="mesh_cpu_percent"):
        Load.model_validate({**LOAD, "mesh_cpu_percent": 101})


@pytest.mark.parametrize("timeout", [float("inf"), "inf", float("nan")])
def test_a_timeout_the_store_could_not_keep_is_refused(timeout: object) -> None:
    with pytest.raises(ValidationError, match="timeout"):
        Action.model_validate({"command": ["true"], "timeout": timeout})


@pytest.mark.parametrize(("code", "ok"), [(-255, True), (255, True), (256, False),
                                          (2**70, False), (-256, False)])
def test_an_end_report_carries_an_exit_code_a_store_can_keep(code: int, ok: bool) -> None:
    fields = {"action_id": "a", "attempt": 1, "agent_id": "n1", "stage": "failed",
              "time": 0.0, "exit_code": code}
    if ok:
        assert AttemptReport.model_validate(fields).exit_code == code
    else:
        with pytest.raises(ValidationError, match="exit_code"):
            AttemptReport.model_validate(fields)


@pytest.mark.parametrize("rates", [[1e308], [float("inf")], [float("nan")], [-1.0]])
def test_a_charge_rate_whose_balance_cap_could_be_infinite_is_refused(rates: list[float]) -> None:
    # Rate x max_charge_seconds is the cap; a rate this large made an infinite balance.
    with pytest.raises(ValidationError, match="charge_rate"):
        AccountConfig.model_validate({"charge_rate": rates, "max_charge_seconds": 1e8})


@pytest.mark.parametrize(("model", "fields", "bad"), [
    (HeldAttempt, {"action_id": "a", "attempt": 2**70}, "attempt"),
    (AttemptReport, {"action_id": "a", "attempt": 1, "agent_id": "n", "stage": "running",
                     "time": float("inf")}, "time"),
    (Load, {**LOAD, "memory_used": 2**70}, "memory_used"),
    (Load, {**LOAD, "load_avg": [float("nan"), 0, 0]}, "load_avg"),
    (LogBatch, {"action_id": "a", "attempt": 1, "stream": "stdout", "offset": 2**64,
                "lines": []}, "offset"),
    (Action, {"command": ["true"], "timeout": 1e300}, "timeout"),
    # Each quota pass checks every one of an account's label limits per waiting action and
    # agent: 300,000 of them made a pass take seconds per action.
    (AccountConfig, {"per_label_task_limits": {f"p{i}": 1 for i in range(300)}},
     "per_label_task_limits"),
    (AccountConfig, {"per_label_task_limits": {"p" * 200: 1}}, "per_label_task_limits"),
])
def test_every_number_crossing_a_boundary_is_bounded(model: Any, fields: dict[str, Any],
                                                      bad: str) -> None:
    with pytest.raises(ValidationError, match=bad):
        model.model_validate(fields)


@pytest.mark.parametrize("field", ["state_dir", "log_dir", "workspace_dir"])
def test_config_paths_must_be_absolute(field: str) -> None:
    with pytest.raises(ValidationError) as info:
        MeshConfig.model_validate({field: "relative/dir"})
    err = InvalidInput.from_validation("config", info.value)
    assert [path for path, _ in err.errors] == [field] and "absolute path" in str(err)


def test_a_read_shows_a_secrets_name_never_its_value() -> None:
    action = Action(command=["true"], env={"A": "1"}, secrets={"TOKEN": "s3cr3t"})
    shown = action.masked()
    assert shown.secrets == {"TOKEN": "***"} and shown.env == {"A": "1"}
    assert "s3cr3t" not in shown.model_dump_json()
    plain = Action(command=["true"])
    assert plain.masked() is plain


def test_an_action_arriving_as_json_text_is_validated_as_one_given_as_fields() -> None:
    sent = Action(command=["make", "test"], env={"CI": "1"}, labels=["os:linux"], cpus=2)
    assert arrived(Action, as_json(sent), "action") == sent
    with pytest.raises(InvalidInput, match=r"cpus: .*greater than or equal to 0") as err:
        arrived(Action, '{"command": ["true"], "cpus": -100}', "action #0")
    assert err.value.errors[0][0] == "cpus"


def test_a_list_arriving_as_json_names_the_item_and_field_at_fault() -> None:
    outcomes = [SubmitOutcome(action_id=ActionId(f"a{i}"), accepted=True, created=True)
                for i in range(3)]
    assert arrived_list(SubmitOutcome, as_json(outcomes), "outcomes") == outcomes
    assert arrived_list(SubmitOutcome, as_json([]), "outcomes") == []
    bad = as_json(outcomes).replace('"created":true', '"created":"perhaps"', 1)
    with pytest.raises(InvalidInput) as err:
        arrived_list(SubmitOutcome, bad, "outcomes")
    assert err.value.errors[0][0] == "0.created"
