"""`mesh up`'s link options: a bad combination is refused, naming the fields, before any Ray
cluster is touched."""

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
])
def test_a_bad_link_option_is_refused_before_ray_is_touched(
        args: list[str], named: str, tmp_path: Path) -> None:
    # An address nothing listens on: had `up` tried to reach Ray, it would say so instead.
    result = CliRunner().invoke(cli, ["--address", "127.0.0.1:1", "up",
                                      "--state-dir", str(tmp_path), *args])
    assert result.exit_code != 0
    assert named in result.output, result.output
