"""Test-wide settings."""

from __future__ import annotations

import os

# CI must never skip silently: a missing dependency fails there instead.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# As the scheduler starts agents (scheduler.agent_handle.AGENT_ENV): tests that switch
# users fork in this process after others have run gRPC in it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
