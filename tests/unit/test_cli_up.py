"""`mesh up`'s link and gateway options: a bad combination is refused, naming the fields,
before any Ray cluster is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mesh.cli import cli


@pytest.mark.parametrize(("args", "named"), [
    (["--link-cert", "/etc/mesh/link.crt"], "link_cert and link_key: give both"),
    (["--link-key", "/etc/mesh/link.key"], "link_cert and link_key: give both"),
    (["--link-cert", "link.crt", "--link-key", "link.key"], "link_cert"),
    (["--link-port", "70000"], "link_port"),
    (["--link", "tcp"], "'tcp' is not one of 'stream', 'ray'"),
    (["--grpc-token-file", "/etc/mesh/token"], "--grpc-port: the gateway's other options"),
    (["--grpc-port", "50051"], "token_file or token (ACTIONMESH_GRPC_TOKEN): give exactly one"),
    (["--grpc-port", "50051", "--grpc-token-file", "token"], "token_file"),
    (["--grpc-port", "50051", "--grpc-token-file", "/t", "--grpc-cert", "/c.crt"],
     "cert and key: give both"),
    (["--grpc-port", "-1", "--grpc-token-file", "/t"], "gateway.port"),
    (["--log-budget", "9" * 400 + "G"], "log_budget"),
])
def test_a_bad_link_option_is_refused_before_ray_is_touched(
        args: list[str], named: str, tmp_path: Path) -> None:
    # An address nothing listens on: had `up` tried to reach Ray, it would say so instead.
    result = CliRunner().invoke(cli, ["--address", "127.0.0.1:1", "up",
                                      "--state-dir", str(tmp_path), *args],
                                env={"ACTIONMESH_GRPC_TOKEN": ""})
    assert result.exit_code != 0
    assert named in result.output, result.output


def test_the_gateway_token_comes_from_the_environment_and_is_checked(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--address", "127.0.0.1:1", "up", "--state-dir",
                                      str(tmp_path), "--grpc-port", "50051"],
                                env={"ACTIONMESH_GRPC_TOKEN": "short"})
    assert result.exit_code != 0
    assert "gateway.token" in result.output and "16 to 4096 characters" in result.output
    assert "'short'" not in result.output, "the token is not echoed"
