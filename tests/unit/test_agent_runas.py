"""Actions run as another user: its uid, gid and groups, its HOME, a workspace of its own; and
a clear failure where the agent cannot switch users."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from agent.runas import RunAs
from tests.agent_support import CONFIG, RecordingSinks, ended, executor, shell

pytestmark = pytest.mark.timeout(60)
USER = "nobody"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def output(sinks: RecordingSinks, action_id: str = "a1") -> list[str]:
    return [text for _, _, text in sinks.lines(action_id)]


@needs_root
async def test_an_action_runs_as_the_configured_user_in_a_workspace_of_its_own(
        tmp_path: Path) -> None:
    secret_file = tmp_path / "agent-only"
    secret_file.write_text("the agent's\n")
    secret_file.chmod(0o600)
    entry = pwd.getpwnam(USER)
    sinks = RecordingSinks()
    config = CONFIG.model_copy(update={"run_as": USER, "workspace_dir": str(tmp_path / "w")})
    async with executor(sinks, config) as ex:
        await ex.start(shell(f'id -u; id -g; echo "home=$HOME user=$USER"; pwd; touch mine; '
                             f'stat -c %U mine; cat {secret_file} || echo refused'))
        await ended(sinks)
        assert ex.user.name == USER
    lines = output(sinks)
    assert lines[:3] == [str(entry.pw_uid), str(entry.pw_gid),
                         f"home={entry.pw_dir} user={USER}"], lines
    assert lines[3].startswith(str(tmp_path / "w" / "agent-test")) and lines[4] == USER
    assert "refused" in lines and "the agent's" not in lines
    end = sinks.end("a1")
    assert end is not None and end.stage == "succeeded", end


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
