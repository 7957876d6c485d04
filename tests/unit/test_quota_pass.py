"""What one quota pass looks at: a busy fleet is not asked whole at every pass."""

from __future__ import annotations

from scheduler.core.quota.model import Worker
from scheduler.core.quota.run import reservations_fit, run_once
from scheduler.core.quota.scheduler import QuotaScheduler
from tests.builders import nid, request

LINUX = frozenset({"os:linux"})


def test_a_pass_asks_only_the_workers_with_room_whether_they_take_work() -> None:
    qs = QuotaScheduler(0.0)
    for i in range(50):
        qs.mark_idle(nid(f"busy{i}"), LINUX, 0.0)
        qs.add_request(request(f"r{i}"), 0.0)
    assert len(run_once(qs)) == 50  # every worker runs one (free bucket: nothing to preempt)
    qs.mark_idle(nid("idle"), LINUX, 1.0, cpus=2)
    for name in ("a", "b", "c"):
        qs.add_request(request(name), 1.0)
    asked: list[str] = []

    def open_worker(worker: Worker) -> bool:
        asked.append(worker.id)
        return True

    assignments = run_once(qs, reservations_fit, open_worker)
    assert [(a.request_id, a.worker_id) for a in assignments] == [("a", "idle"), ("b", "idle")]
    assert asked == ["idle"], "asked once, and only where there is room"
