"""The agent's measure of its own attempts' CPU: real processes, and a fake /proc for the scan."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from agent.cpushare import TICKS, AttemptCpu, GroupScan, reaped_by
from agent.sampler import LoadSampler
from mesh.waiting import wait_until

SPINNER = "while :; do :; done"
SPIN = ["sh", "-c", SPINNER]
# /proc counts in ticks and getrusage in microseconds: a process's time read both ways may
# differ by a tick or two.
ROUNDING = 3 / TICKS


def burn(seconds: float) -> list[str]:
    """A process that uses `seconds` of CPU, however busy the machine is, then exits."""
    return [sys.executable, "-c", f"import time\nwhile time.process_time() < {seconds}: pass"]


@contextmanager
def spawned(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A process in a session (and process group) of its own, as the executor starts them."""
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        yield proc
    finally:
        # Every process of its session: some made process groups of their own in it.
        for other in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(other.pid) == proc.pid:
                    other.kill()
        proc.wait()


def cpu_of(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


# ---- real processes --------------------------------------------------------------------


def test_a_busy_attempt_is_counted_as_ours() -> None:
    with spawned(SPIN) as busy:
        share = AttemptCpu(lambda: [busy.pid], cpu_count=1)
        before, own_before = share.seconds(), cpu_of(busy.pid)
        wait_until(lambda: cpu_of(busy.pid), lambda s: s >= own_before + 0.3,
                   what="the attempt to spin for 0.3 CPU seconds")
        assert share.seconds() - before >= 0.3 - ROUNDING
        assert share.percent() > 0


def test_a_process_that_made_a_group_of_its_own_inside_the_attempt_is_ours() -> None:
    # GNU timeout puts itself and its child in a new process group, in the same session.
    with spawned(["sh", "-c", f"timeout 60 sh -c '{SPINNER}'"]) as attempt:
        # The spinner once exec'd; before that a fork of `sh` or `timeout` shares its name.
        inner = wait_until(lambda: [p for p in psutil.Process(attempt.pid).children(True)
                                    if p.cmdline()[2:3] == [SPINNER]], bool,
                           what="the inner spinner")[0]
        assert os.getpgid(inner.pid) != attempt.pid and os.getsid(inner.pid) == attempt.pid
        share = AttemptCpu(lambda: [attempt.pid], cpu_count=1)
        before, inner_before = share.seconds(), cpu_of(inner.pid)
        wait_until(lambda: cpu_of(inner.pid), lambda s: s >= inner_before + 0.3,
                   what="the inner spinner to use 0.3 CPU seconds")
        assert share.seconds() - before >= 0.3 - ROUNDING


def test_a_busy_process_outside_the_attempts_is_not_ours() -> None:
    with spawned(["sleep", "60"]) as idle, spawned(SPIN) as other:
        share = AttemptCpu(lambda: [idle.pid], cpu_count=1)
        before, other_before = share.seconds(), cpu_of(other.pid)
        wait_until(lambda: cpu_of(other.pid), lambda s: s >= other_before + 0.3,
                   what="the other process to spin for 0.3 CPU seconds")
        assert share.seconds() - before < ROUNDING


def test_an_attempt_that_ends_between_two_samples_is_still_counted() -> None:
    running: list[subprocess.Popen[bytes]] = []
    now = [0.0]
    share = AttemptCpu(lambda: [p.pid for p in running if p.returncode is None], cpu_count=1,
                       clock=lambda: now[0])
    start = share.seconds()
    with spawned(burn(0.3)) as child:
        running.append(child)
        wait_until(share.seconds, lambda s: s > start, what="the attempt seen using CPU")
        now[0] = 1.0
        first = share.percent()  # while it runs
        child.wait()  # it ends and is reaped: its time moves into our RUSAGE_CHILDREN
    now[0] = 2.0
    second = share.percent()  # it is gone from /proc and from the running groups
    # 0.3 s of CPU, plus the interpreter's start-up, over one second of one CPU.
    assert second > 0
    assert first + second >= 30 - 100 * ROUNDING


def test_an_ended_attempt_is_counted_once_whether_or_not_it_was_reaped() -> None:
    running: list[int] = []
    share = AttemptCpu(lambda: running, cpu_count=1)
    start = share.seconds()
    child = subprocess.Popen(burn(0.2), start_new_session=True)
    running.append(child.pid)
    # Ended but not reaped: a zombie, whose time /proc still shows.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    zombie = share.seconds()
    child.wait()
    reaped = share.seconds()
    assert zombie - start >= 0.2 - ROUNDING
    assert abs(reaped - zombie) <= ROUNDING


def test_an_attempt_a_helper_reaped_is_counted_through_the_helper() -> None:
    # The spawn server's part, played by a plain process: it starts the attempt in a
    # session of its own, reaps it, and lives on. The attempt's time then sits in the
    # helper's cutime, not in anything of ours.
    helper = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys\n"
         f"child = subprocess.Popen({burn(0.3)!r}, start_new_session=True)\n"
         "print(child.pid, flush=True)\n"
         "child.wait()\n"
         "print('reaped', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert helper.stdout is not None and helper.stdin is not None
    try:
        running = [int(helper.stdout.readline())]
        counted = AttemptCpu(lambda: running, cpu_count=1, parents=lambda: [helper.pid])
        blind = AttemptCpu(lambda: running, cpu_count=1)
        start, blind_start = counted.seconds(), blind.seconds()
        assert helper.stdout.readline() == "reaped\n"
        running.clear()
        assert counted.seconds() - start >= 0.3 - ROUNDING
        assert blind.seconds() - blind_start < ROUNDING  # what the helper's parent alone sees
    finally:
        helper.stdin.close()
        helper.wait()


def test_a_load_sample_tells_our_share_from_the_rest() -> None:
    with spawned(SPIN) as ours, spawned(SPIN) as theirs:
        sampler = LoadSampler(lambda: [ours.pid])
        before = cpu_of(ours.pid), cpu_of(theirs.pid)
        wait_until(lambda: (cpu_of(ours.pid), cpu_of(theirs.pid)),
                   lambda now: all(n >= b + 0.3 for n, b in zip(now, before, strict=True)),
                   what="both spinners to use 0.3 CPU seconds")
        load = sampler.sample(1.0)
    assert load.mesh_cpu_percent > 0 and load.foreign_cpu_percent > 0
    # One spinner can hold at most one CPU of the machine.
    assert load.mesh_cpu_percent <= 100 / load.cpu_count + 5


# ---- the scan, over a fake /proc ---------------------------------------------------------


def write_stat(proc: Path, pid: int, pgrp: int, session: int, times: tuple[int, ...],
               comm: str = "sh") -> None:
    utime, stime, cutime, cstime = times
    # state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
    # cutime cstime priority nice num_threads itrealvalue starttime, as proc(5) lists them.
    fields = ["S", 1, pgrp, session, 0, -1, 0, 0, 0, 0, 0, utime, stime, cutime, cstime,
              20, 0, 1, 0, 100]
    line = f"{pid} ({comm}) " + " ".join(map(str, fields)) + "\n"
    (proc / str(pid)).mkdir(exist_ok=True)
    (proc / str(pid) / "stat").write_text(line)


def set_last_pid(proc: Path, pid: int) -> None:
    (proc / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
    (proc / "sys" / "kernel" / "ns_last_pid").write_text(f"{pid}\n")


def test_the_scan_counts_processes_by_session_or_group(tmp_path: Path) -> None:
    write_stat(tmp_path, 100, 100, 100, (10, 5, 20, 5))  # an attempt's main process
    write_stat(tmp_path, 101, 101, 100, (30, 0, 0, 0), comm="a (b) c")  # own group, same session
    write_stat(tmp_path, 102, 100, 7, (40, 0, 0, 0))  # in the group (a session can't differ)
    write_stat(tmp_path, 200, 200, 200, (1000, 0, 0, 0))  # someone else
    (tmp_path / "self").mkdir()
    assert GroupScan(str(tmp_path)).seconds([100]) == (40 + 30 + 40) / TICKS


def test_a_helper_counts_for_the_children_it_reaped_not_for_itself(tmp_path: Path) -> None:
    write_stat(tmp_path, 300, 300, 300, (70, 5, 20, 6))
    assert reaped_by([300], str(tmp_path)) == (20 + 6) / TICKS
    assert reaped_by([300, 301], str(tmp_path)) == (20 + 6) / TICKS  # 301 is gone


def test_a_pid_found_foreign_is_read_again_only_once_the_kernel_may_have_reused_it(
        tmp_path: Path) -> None:
    scan = GroupScan(str(tmp_path))
    write_stat(tmp_path, 100, 100, 100, (10, 0, 0, 0))
    write_stat(tmp_path, 500, 500, 500, (1000, 0, 0, 0))
    set_last_pid(tmp_path, 600)
    assert scan.seconds([100]) == 10 / TICKS
    # Rewrite 500 as ours without the pid counter passing it: a real kernel cannot do that,
    # so a scan that still does not count it did not read it again.
    write_stat(tmp_path, 500, 100, 100, (1000, 0, 0, 0))
    for last in (600, 700, 32000, 450):  # the counter moves on, and wraps, short of 500
        set_last_pid(tmp_path, last)
        assert scan.seconds([100]) == 10 / TICKS, last
    set_last_pid(tmp_path, 550)  # 451..550 handed out since: 500 may be a new process
    assert scan.seconds([100]) == 1010 / TICKS


def test_a_scan_with_no_attempts_forgets_what_it_knew(tmp_path: Path) -> None:
    scan = GroupScan(str(tmp_path))
    write_stat(tmp_path, 500, 500, 500, (1000, 0, 0, 0))
    set_last_pid(tmp_path, 600)
    assert scan.seconds([100]) == 0
    assert scan.seconds([]) == 0  # nothing runs: the pid counter may wrap unseen meanwhile
    write_stat(tmp_path, 500, 100, 100, (1000, 0, 0, 0))
    assert scan.seconds([100]) == 1000 / TICKS


def test_without_the_pid_counter_every_scan_reads_every_process(tmp_path: Path) -> None:
    scan = GroupScan(str(tmp_path))
    write_stat(tmp_path, 500, 500, 500, (1000, 0, 0, 0))
    assert scan.seconds([100]) == 0
    write_stat(tmp_path, 500, 100, 100, (1000, 0, 0, 0))
    assert scan.seconds([100]) == 1000 / TICKS


def test_time_lost_with_a_process_counts_as_no_use_not_negative_use(tmp_path: Path) -> None:
    # An orphan reparented away takes its time with it when it ends.
    write_stat(tmp_path, 100, 100, 100, (0, 0, 0, 0))
    write_stat(tmp_path, 101, 100, 100, (50, 0, 0, 0))
    clock = itertools.count(0.0, 1.0)
    share = AttemptCpu(lambda: [100], cpu_count=1, clock=lambda: next(clock),
                       proc=str(tmp_path))
    (tmp_path / "101" / "stat").unlink()
    (tmp_path / "101").rmdir()
    assert share.percent() == 0.0
    write_stat(tmp_path, 100, 100, 100, (TICKS // 2, 0, 0, 0))
    assert share.percent() == pytest.approx(50.0)  # measured from where it dropped to
