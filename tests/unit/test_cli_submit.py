"""`mesh submit`'s own input: what it cannot read or validate is refused with one line
naming the option, before any Ray cluster is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mesh.cli import cli

# An address nothing listens on: had `submit` tried to reach Ray, it would say so instead.
NOWHERE = ["--address", "127.0.0.1:1"]


@pytest.mark.parametrize(("args", "named"), [
    (["--memory", "9" * 400], "memory"),
    (["--memory", "1" + " " * 30_000 + "G"], "memory"),
    (["--timeout", "1" * 12_000 + "x"], "timeout"),
])
def test_a_bad_option_is_one_line_naming_it(args: list[str], named: str) -> None:
    result = CliRunner().invoke(cli, [*NOWHERE, "submit", *args, "true"])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


def test_a_secret_file_that_is_not_text_is_refused_without_its_bytes(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.write_bytes(b"TOKEN=hunter2\xff\xfe\n")
    result = CliRunner().invoke(cli, [*NOWHERE, "submit", "--secret-file", str(secrets), "true"])
    assert result.exit_code == 2, result.output
    assert str(secrets) in result.output and "cannot be read" in result.output
    assert "hunter2" not in result.output

