"""The quota clock: when the core moves the quota scheduler's time on, and by how much."""

from __future__ import annotations

from scheduler.core.quota.scheduler import QuotaScheduler

# Seconds between moves of the quota clock. Balances are float32, as upstream's, and steps
# of a millisecond would round a large balance's change away: at a balance of 100,000
# CPU-seconds a float32 step is 0.0078 s, so 1 ms of a 1-CPU charge is lost entirely, while
# 0.25 s is kept to within 2 %.
QUOTA_TICK = 0.25


def advance(quota: QuotaScheduler, now: float, force: bool = False) -> None:
    """Charge running work and recharge accounts up to `now`, at most every QUOTA_TICK
    seconds unless forced. Work that ends in between is charged up to its end on its own
    (`QuotaScheduler.finished`)."""
    if force or now - quota.last_update_time >= QUOTA_TICK:
        quota.update_time(now)
