"""`mesh top`'s view of the mesh: agents with load bars and reservations, what runs, and
the queue by account and priority, drawn with rich from one snapshot."""

from __future__ import annotations

import os
import sys
import termios
import threading
import time
import tty
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mesh.schema import (
    FREE_BUCKET,
    NUM_PRIORITIES,
    AccountStatus,
    AgentStatus,
    format_size,
)

BAR_WIDTH = 16
# How wide a frame is drawn where the output is not a terminal.
TOP_SCRIPT_WIDTH = 200


@dataclass(frozen=True)
class Snapshot:
    """What one frame shows, read from the mesh at one moment."""

    agents: list[AgentStatus]
    accounts: list[AccountStatus]
    counts: dict[str, int]
    taken_at: float


def frame(snapshot: Snapshot) -> RenderableType:
    """One frame of the view."""
    stages = ", ".join(f"{stage} {n}" for stage, n in sorted(snapshot.counts.items()) if n)
    title = Text.assemble(("actionmesh", "bold"), f"  {len(snapshot.agents)} agent(s); ",
                          stages or "no actions",
                          ("  " + time.strftime("%H:%M:%S", time.localtime(snapshot.taken_at)),
                           "dim"))
    return Group(title, _agents(snapshot.agents), _queue(snapshot.accounts))


def _bar(percent: float) -> RenderableType:
    shown = max(0.0, min(100.0, percent))
    style = "red" if shown >= 90 else "yellow" if shown >= 70 else "green"
    return ProgressBar(total=100.0, completed=shown, width=BAR_WIDTH, complete_style=style,
                       finished_style=style)


def _agents(agents: list[AgentStatus]) -> Table:
    table = Table(expand=False, box=None, pad_edge=False)
    for column in ("AGENT", "STATE", "CPU", "", "MEMORY", "", "RESERVED", "RUNNING", "LINK"):
        table.add_column(column, no_wrap=True)
    for agent in sorted(agents, key=lambda a: a.info.hostname):
        load = agent.load
        cpu = load.cpu_percent if load is not None else 0.0
        memory = 100.0 * load.memory_used / load.memory_total if load and load.memory_total \
            else 0.0
        offered = agent.info.cpus * agent.capacity_percent / 100.0
        running = ", ".join(f"{r.action_id[:8]}#{r.attempt}" for r in agent.running[:3])
        more = len(agent.running) - 3
        table.add_row(
            agent.info.hostname, agent.state, _bar(cpu), f"{cpu:3.0f}%", _bar(memory),
            f"{format_size(load.memory_used)}" if load is not None else "-",
            f"{agent.reserved_cpus:g}/{offered:g} CPUs "
            f"{format_size(agent.reserved_memory)}",
            running + (f" +{more}" if more > 0 else "") or "-", agent.link)
    return table


def _queue(accounts: list[AccountStatus]) -> Table:
    table = Table(expand=False, box=None, pad_edge=False, title="queue by account",
                  title_justify="left")
    table.add_column("ACCOUNT", no_wrap=True)
    for priority in range(NUM_PRIORITIES):
        table.add_column(f"P{priority}", justify="right")
    table.add_column("FREE", justify="right")
    table.add_column("RUNNING", justify="right")
    for account in sorted(accounts, key=lambda a: a.id):
        queued = [account.queued_by_priority.get(p, 0) for p in range(FREE_BUCKET + 1)]
        table.add_row(account.id, *(str(n) if n else "." for n in queued),
                      str(account.running))
    return table


class QuitKey:
    """While entered, watches the terminal for `q` (read unbuffered, without echo); with no
    terminal on stdin there is nothing to watch, and Ctrl-C ends the view."""

    def __init__(self) -> None:
        self.pressed = threading.Event()
        self._saved: list[Any] | None = None

    def __enter__(self) -> QuitKey:
        if sys.stdin.isatty():
            fd = sys.stdin.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
            threading.Thread(target=self._read, args=(fd,), daemon=True).start()
        return self

    def _read(self, fd: int) -> None:
        while not self.pressed.is_set():
            key = os.read(fd, 1)
            if key in (b"q", b"Q", b""):
                self.pressed.set()

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)
