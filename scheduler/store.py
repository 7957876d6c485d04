"""What the scheduler keeps across its restarts: for now, the quota accounts and balances.

Until the scheduler has its durable SQLite state, the quota scheduler's accounts, balances
and options are written as one JSON snapshot in the state directory, replaced atomically
(write, fsync, rename), so a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from mesh.errors import MeshError
from scheduler.core.quota.snapshot import QuotaSnapshot

QUOTA_FILE = "quota.json"


class StateCorrupt(MeshError):
    """The saved state cannot be read: start-up stops rather than silently start empty."""


class Store(Protocol):
    def load_quota(self) -> QuotaSnapshot | None: ...
    def save_quota(self, snapshot: QuotaSnapshot) -> None: ...


class FileStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / QUOTA_FILE

    def load_quota(self) -> QuotaSnapshot | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateCorrupt(f"cannot read {self.path}: {exc}") from exc
        try:
            return QuotaSnapshot.model_validate_json(text)
        except ValidationError as exc:
            raise StateCorrupt(f"{self.path} is not a quota snapshot ({exc.error_count()} "
                               f"errors, first: {exc.errors()[0]['msg']}); move it away to "
                               "start without the saved accounts") from exc

    def save_quota(self, snapshot: QuotaSnapshot) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".quota-", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(snapshot.model_dump_json())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
