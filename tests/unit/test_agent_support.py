"""The process census that agent tests rely on finds what it should."""

from __future__ import annotations

import os

import psutil

from mesh.waiting import wait_until
from tests.agent_support import marked


def test_marked_finds_a_process_by_its_environment() -> None:
    mark = {"HARNESS_MARK": f"x{os.getpid()}"}
    proc = psutil.Popen(["sleep", "30"], env={**os.environ, **mark})
    try:
        wait_until(lambda: marked(mark), lambda p: p == [proc.pid])
    finally:
        proc.kill()
        proc.wait()
    assert marked(mark) == []
