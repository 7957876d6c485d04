"""cluster.yaml: valid for Ray's `ray up`, and every command in it parses with its tool."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import start as ray_start

from mesh import bootstrap
from mesh.cli import cli
from mesh.names import AGENT_OPT_OUT
from mesh.schema import LABEL_RE

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CLUSTER_YAML.read_text())
    return loaded


def commands(lines: list[str], tool: str) -> list[list[str]]:
    """The argument lists of every `tool ...` command (a line may chain several with `&&`),
    environment assignments dropped."""
    found = []
    for line in lines:
        for command in line.split(" && "):
            words = shlex.split(command)
            while words and "=" in words[0] and not words[0].startswith("-"):
                words.pop(0)
            if words and words[0] == tool:
                found.append(words[1:])
    return found


def as_dict(value: str | dict[str, Any]) -> dict[str, Any]:
    """Ray's `start` parses some JSON options itself, others it leaves as text."""
    return json.loads(value) if isinstance(value, str) else dict(value)


def parse(command: click.Command, args: list[str]) -> dict[str, Any]:
    with command.make_context(command.name or "", list(args), resilient_parsing=False) as ctx:
        return dict(ctx.params)


def test_ray_accepts_the_cluster_config(config: dict[str, Any]) -> None:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # Ray's own schema, as `ray up` applies it
    assert len(config["provider"]["worker_ips"]) == config["max_workers"]


def test_the_head_starts_ray_with_our_health_checks_and_stays_out_of_the_pool(
        config: dict[str, Any]) -> None:
    (head,) = [parse(ray_start, args[1:]) for args in
               commands(config["head_start_ray_commands"], "ray") if args[0] == "start"]
    system = as_dict(head["system_config"])  # Ray's parser may add its own spilling keys
    assert head["head"] and {k: system.get(k) for k in bootstrap.HEALTH_CHECKS} == \
        bootstrap.HEALTH_CHECKS
    assert as_dict(head["labels"]) == {AGENT_OPT_OUT: "off"}


def test_the_workers_join_the_head_with_labels_actions_can_require(
        config: dict[str, Any]) -> None:
    (worker,) = [parse(ray_start, args[1:]) for args in
                 commands(config["worker_start_ray_commands"], "ray") if args[0] == "start"]
    # Ray 2.60 enables token auth on the head: a worker without it fails to join.
    assert any("RAY_AUTH_MODE=token" in line and "ray start" in line
               for line in config["worker_start_ray_commands"])
    assert worker["address"] == "$RAY_HEAD_IP:6379"
    # Registered under the address it was reached at: the SSH session's own (its third word).
    assert worker["node_ip_address"] == "${ssh[2]}"
    assert any(line.startswith("ssh=($SSH_CONNECTION) && ")
               for line in config["worker_start_ray_commands"])
    labels = as_dict(worker["labels"])
    assert labels and all(LABEL_RE.match(f"{k}:{v}" if v else k) for k, v in labels.items())


def test_mesh_up_runs_on_the_head_with_fixed_link_and_gateway_ports(config: dict[str, Any]) -> None:
    (args,) = commands(config["head_start_ray_commands"], "mesh")
    with cli.make_context("mesh", list(args)) as ctx:
        assert ctx.params["address"] == "auto"
        sub = cli.get_command(ctx, ctx.protected_args[0])
        assert sub is not None and sub.name == "up"
        params = parse(sub, ctx.args)
    assert params["link_port"] == 6390
    # The gateway too, with the token file that file_mounts puts on the head.
    assert params["grpc_port"] == 50051
    assert params["grpc_token_file"] == "~/.actionmesh/grpc_token"
    assert config["file_mounts"]["~/.actionmesh/grpc_token"] == "./cluster-secrets/grpc_token"
    # Ray applies rsync_exclude to every mount: excluding the tokens by name would keep
    # them from the machines too; their directory keeps them out of the checkout's copy.
    mounted = {Path(source).name for source in config["file_mounts"].values()}
    assert not mounted & set(config["rsync_exclude"])
    assert "cluster-secrets" in config["rsync_exclude"]
    # Actions run as a user of their own, which setup makes on every machine.
    assert params["run_as"] == "actionmesh-run" and config["auth"]["ssh_user"] == "root"
    assert any("useradd" in line and line.rstrip().endswith("actionmesh-run")
               for line in config["setup_commands"])
