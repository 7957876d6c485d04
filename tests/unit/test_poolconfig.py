"""The pool config file: what it accepts, what it refuses (naming the field), and which group
an agent is in."""

from __future__ import annotations

import pytest

from mesh.errors import InvalidInput
from mesh.poolconfig import DEFAULT_GROUP, PoolConfig

EXAMPLE = """
groups:
  big:
    match: {labels: ['pool:big']}
    capabilities: [vpn]
  arm:
    match: {hostnames: ["arm-*", "graviton-?"]}
    capacity: 20
  gcp:
    match: {labels: ['cloud:gcp'], hostnames: ["build0*"]}
    blocked: true
assignments:
  linux-build: {group: big, pin: true}
  docs: arm
colocate:
  - [linux-build, linux-test]
dispatch_window: 7d
dispatch_every: 6h
"""


def test_the_example_reads_with_its_shorthand_and_durations() -> None:
    config = PoolConfig.parse(EXAMPLE)
    assert list(config.groups) == ["big", "arm", "gcp"]
    assert config.groups["arm"].capacity == 20 and config.groups["big"].capacity == 100
    assert config.groups["gcp"].blocked and config.groups["big"].capabilities == ["vpn"]
    assert config.assignments["docs"].group == "arm" and not config.assignments["docs"].pin
    assert config.assignments["linux-build"].pin
    assert (config.dispatch_window, config.dispatch_every) == (7 * 86400, 6 * 3600)
    assert PoolConfig.parse("") == PoolConfig(), "an empty file: every agent in default"


@pytest.mark.parametrize(("hostname", "labels", "group"), [
    pytest.param("x", ["pool:big"], "big", id="by-label"),
    pytest.param("x", ["pool:big", "other:y"], "big", id="extra-labels-do-not-matter"),
    pytest.param("x", ["pool:small"], DEFAULT_GROUP, id="label-value-differs"),
    pytest.param("arm-7", [], "arm", id="by-hostname-pattern"),
    pytest.param("graviton-3", [], "arm", id="by-one-char-pattern"),
    pytest.param("graviton-10", [], DEFAULT_GROUP, id="one-char-pattern-is-one-char"),
    pytest.param("ARM-7", [], DEFAULT_GROUP, id="hostname-case-matters"),
    pytest.param("build03", ["cloud:gcp"], "gcp", id="labels-and-hostname-both"),
    pytest.param("build03", [], DEFAULT_GROUP, id="hostname-without-its-labels"),
    pytest.param("arm-1", ["pool:big"], "big", id="first-group-in-file-order-wins"),
])
def test_an_agent_is_in_the_first_group_that_matches_it(
        hostname: str, labels: list[str], group: str) -> None:
    assert PoolConfig.parse(EXAMPLE).group_of(hostname, labels) == group


@pytest.mark.parametrize("capacity", [1, 100])
def test_capacity_takes_both_ends_of_its_range(capacity: int) -> None:
    text = f"groups: {{g: {{match: {{hostnames: [h]}}, capacity: {capacity}}}}}"
    assert PoolConfig.parse(text).groups["g"].capacity == capacity


@pytest.mark.parametrize(("text", "field"), [
    pytest.param("groups: {g: {match: {hostnames: [h]}, capacity: 0}}",
                 "groups.g.capacity", id="capacity-below-1"),
    pytest.param("groups: {g: {match: {hostnames: [h]}, capacity: 101}}",
                 "groups.g.capacity", id="capacity-above-100"),
    pytest.param("groups: {g: {match: {}}}", "groups.g.match", id="empty-match"),
    pytest.param("groups: {g: {match: {hostnames: [h]}, capabilities: ['no space']}}",
                 "groups.g.capabilities", id="malformed-capability"),
    pytest.param("groups: {Big: {match: {hostnames: [h]}}}", "groups.Big", id="bad-name"),
    pytest.param("groups: {big-: {match: {hostnames: [h]}}}", "groups.big-",
                 id="name-must-end-as-a-label-value"),
    pytest.param("groups: {g: {match: {labels: ['a b']}}}", "groups.g.match.labels",
                 id="malformed-match-label"),
    pytest.param("groups: {default: {match: {hostnames: [h]}}}", "groups",
                 id="default-is-reserved"),
    pytest.param("groups: {g: {match: {hostnames: [h]}, blocked: maybe}}",
                 "groups.g.blocked", id="blocked-not-a-bool"),
    pytest.param("groups: {g: {match: {hostnames: [h]}, size: 3}}", "groups.g.size",
                 id="unknown-field"),
    pytest.param("assignments: {job: nowhere}", "assignments.job", id="unknown-group"),
    pytest.param("colocate: [[a]]", "colocate.0", id="set-of-one"),
    pytest.param("colocate: [[a, b], [b, c]]", "colocate.1", id="job-in-two-sets"),
    pytest.param("groups: {g: {match: {hostnames: [h]}}, k: {match: {hostnames: [i]}}}\n"
                 "assignments: {a: g, b: k}\ncolocate: [[a, b]]", "colocate.0",
                 id="set-split-by-assignments"),
    pytest.param("dispatch_window: 5m", "dispatch_window", id="window-too-short"),
    pytest.param("dispatch_every: soon", "dispatch_every", id="every-not-a-duration"),
    pytest.param("groups: [a, b]", "groups", id="groups-not-a-mapping"),
])
def test_a_bad_file_is_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        PoolConfig.parse(text)
    named = [path for path, _ in caught.value.errors] + [str(caught.value)]
    assert any(field in item for item in named), (field, caught.value.errors)


@pytest.mark.parametrize(("text", "says"), [
    pytest.param("groups: {g: [", "not YAML (line 1)", id="broken-yaml"),
    pytest.param("- a\n- b", "expected a mapping", id="a-list"),
    # 85 KB of aliases standing for 64 million job names, refused before they are checked.
    pytest.param("colocate:\n- &a [" + ",".join(f"j{i}" for i in range(8000)) + "]\n"
                 + "- *a\n" * 8000, "more than 1,000,000 values once its aliases are expanded",
                 id="an-alias-bomb"),
])
def test_what_is_not_a_config_at_all_is_refused_saying_so(text: str, says: str) -> None:
    with pytest.raises(InvalidInput, match="pool config") as caught:
        PoolConfig.parse(text)
    assert says in str(caught.value)


def test_aliases_within_reason_are_read() -> None:
    config = PoolConfig.parse("groups:\n  big: {match: &big {labels: ['pool:big']}}\n"
                              "  huge: {match: *big, capacity: 50}\n")
    assert config.groups["huge"].match == config.groups["big"].match
