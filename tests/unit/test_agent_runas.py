"""Actions run as another user: its uid, gid and groups, its HOME, a workspace of its own; and
a clear failure where the agent cannot switch users."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runas import RunAs
from tests.agent_support import CONFIG, RecordingSinks, ended, executor, shell

pytestmark = pytest.mark.timeout(60)
USER = "nobody"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def output(sinks: RecordingSinks, action_id: str = "a1") -> list[str]:
    return [text for _, _, text in sinks.lines(action_id)]


@pytest.fixture
def passable() -> Iterator[Path]:
    """A directory other users may pass through (pytest's own is the agent's alone)."""
    path = Path(tempfile.mkdtemp(prefix="mesh-runas-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@needs_root
async def test_an_action_runs_as_the_configured_user_in_a_workspace_of_its_own(
        tmp_path: Path, passable: Path) -> None:
    secret_file = tmp_path / "agent-only"
    secret_file.write_text("the agent's\n")
    secret_file.chmod(0o600)
    entry = pwd.getpwnam(USER)
    sinks = RecordingSinks()
    config = CONFIG.model_copy(update={"run_as": USER, "workspace_dir": str(passable)})
    async with executor(sinks, config) as ex:
        await ex.start(shell(f'id -u; id -g; echo "user=$USER"; pwd; echo "home=$HOME"; '
                             f'touch mine; stat -c %U mine; cat {secret_file} || echo refused'))
        await ended(sinks)
        assert ex.user.name == USER
        # Even left empty, a workspace of another user's attempt serves no later attempt.
        await ex.start(shell("rm mine; pwd", "a2"))
        await ended(sinks, "a2")
        await ex.start(shell("pwd", "a3"))
        await ended(sinks, "a3")
    assert "+" not in output(sinks, "a3")[0] and output(sinks, "a3") != output(sinks, "a2")
    lines = output(sinks)
    assert lines[:3] == [str(entry.pw_uid), str(entry.pw_gid), f"user={USER}"], lines
    # Its working directory and HOME: a workspace of this attempt's own, made its.
    assert lines[3].startswith(str(passable / "agent-test")) and lines[4] == f"home={lines[3]}"
    assert lines[5] == USER
    assert "refused" in lines and "the agent's" not in lines
    end = sinks.end("a1")
    assert end is not None and end.stage == "succeeded", end


@needs_root
async def test_a_working_directory_the_user_may_not_enter_is_not_entered(
        tmp_path: Path, passable: Path) -> None:
    # Entered as the agent, it would let the action read what sits behind a 0700 directory.
    closed = tmp_path / "closed"  # under pytest's 0700 directory
    (closed / "inside").mkdir(parents=True)
    (closed / "inside" / "readable").write_text("behind a closed door\n")
    sinks = RecordingSinks()
    config = CONFIG.model_copy(update={"run_as": USER, "workspace_dir": str(passable)})
    async with executor(sinks, config) as ex:
        await ex.start(shell("cat readable", cwd=str(closed / "inside")))
        await ended(sinks)
    end = sinks.end("a1")
    assert end is not None and end.stage == "failed" and end.exit_code == 126, end
    assert "behind a closed door" not in output(sinks)


async def test_an_unknown_user_fails_every_start_saying_why(tmp_path: Path) -> None:
    sinks = RecordingSinks()
    config = CONFIG.model_copy(update={"run_as": "no-such-user-xyz"})
    async with executor(sinks, config) as ex:
        await ex.start(shell("echo must not run"))
        await ended(sinks)
    end = sinks.end("a1")
    assert end is not None and end.stage == "failed" and output(sinks) == []
    assert "cannot run actions as 'no-such-user-xyz'" in end.reason
    assert "there is no user" in end.reason


def test_an_agent_that_is_not_root_cannot_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    other = next(p for p in pwd.getpwall() if p.pw_uid != os.geteuid())
    monkeypatch.setattr(os, "geteuid", lambda: 12345)
    with pytest.raises(ValueError, match="not root"):
        RunAs.named(other.pw_name)
