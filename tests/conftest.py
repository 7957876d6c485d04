"""Test-wide settings."""

from __future__ import annotations

import os

# CI must never skip silently: a missing dependency fails there instead.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
