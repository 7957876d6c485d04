"""How an attempt's end reads in its report: exit status to stage, exit code and reason."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from mesh import reasons
from mesh.protocol import NotRun, ReportStage
from mesh.schema import format_size


@dataclass(frozen=True)
class Outcome:
    stage: ReportStage | NotRun
    exit_code: int | None
    reason: str


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def outcome(returncode: int | None, stopped: tuple[ReportStage, str] | None = None,
            oom_limit: int | None = None) -> Outcome:
    """The report for a process that ended with `returncode` (negative: killed by a signal;
    None: the agent never learned it).

    `stopped` is the stage and reason when the agent ended it (cancel, timeout); `oom_limit`
    the attempt's memory limit when the kernel killed a process of it for exceeding it. A
    signal death is reported as exit code 128+N, as a shell would show it: SIGKILL is 137.
    """
    exit_code: int | None
    if returncode is None:
        exit_code = None
        how = reasons.STATUS_LOST
    elif returncode < 0:
        signum = -returncode
        exit_code = 128 + signum
        how = f"killed by {signal_name(signum)} (exit code {exit_code})"
    else:
        exit_code = returncode
        how = f"exited with code {exit_code}"
    if stopped is not None:
        stage, why = stopped
        return Outcome(stage, exit_code, f"{why}; {how}")
    if returncode == 0:
        return Outcome("succeeded", 0, "")
    if oom_limit is not None:
        return Outcome("failed", exit_code,
                       reasons.OUT_OF_MEMORY.format(limit=format_size(oom_limit), how=how))
    return Outcome("failed", exit_code, how)
