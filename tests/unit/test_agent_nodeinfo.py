"""An agent's labels and resources from its Ray node entry."""

from __future__ import annotations

import platform

import pytest

from agent.nodeinfo import automatic_labels, find_node, node_labels, offered


def test_automatic_labels_name_the_os_and_architecture() -> None:
    assert automatic_labels("Linux", "x86_64") == ["os:linux", "arch:x86_64"]
    assert automatic_labels() == [f"os:{platform.system().lower()}",
                                  f"arch:{platform.machine().lower()}"]


@pytest.mark.parametrize(
    ("ray_labels", "expected"),
    [
        ({"zone": "eu-1"}, ["zone:eu-1"]),
        ({"vpn": ""}, ["vpn"]),
        ({"ray.io/node_id": "abc", "ray.io/market-type": "spot"}, []),
        ({"actionmesh/agent": "off"}, []),
        ({"bad key": "x", "gpu": "a100"}, ["gpu:a100"]),
        ({"trail-": "x"}, []),
    ],
    ids=["key-value", "bare-key", "ray-own", "mesh-steering", "malformed-dropped",
         "malformed-edge"],
)
def test_node_labels(ray_labels: dict[str, str], expected: list[str]) -> None:
    assert node_labels(ray_labels) == expected


def test_offered_reads_this_nodes_cpus_memory_and_labels() -> None:
    nodes = [
        {"NodeID": "other", "Resources": {"CPU": 8.0, "memory": 1e9}, "Labels": {}},
        {"NodeID": "me", "Resources": {"CPU": 2.0, "memory": 4294967296.0},
         "Labels": {"ray.io/node_id": "me", "vpn": "", "zone": "b"}},
    ]
    cpus, memory, labels = offered(find_node(nodes, "me"))
    assert (cpus, memory) == (2.0, 4294967296)
    assert labels == sorted({*automatic_labels(), "vpn", "zone:b"})


def test_a_node_without_cpus_offers_none_and_an_unknown_node_is_an_error() -> None:
    assert offered({"NodeID": "n", "Resources": {}, "Labels": {}})[:2] == (0.0, 0)
    with pytest.raises(KeyError, match="no node 'ghost'"):
        find_node([{"NodeID": "n"}], "ghost")
