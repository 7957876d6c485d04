"""The pool config file `mesh up --pool-config` named: read again when it changes, as the
Prow dispatcher follows its cluster file."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from mesh.errors import InvalidInput
from mesh.poolconfig import PoolConfig

log = logging.getLogger("actionmesh.scheduler")


class PoolFile:
    """A watched pool config file. `changed()` gives the config and its content's digest
    when the content differs from the last look (or, at first, from `applied`: the digest
    of what was last applied from it, before a restart); a bad edit is logged once and
    None returned, so the config in force stays."""

    def __init__(self, path: str, applied: str | None = None) -> None:
        self.path = Path(path)
        self._seen: tuple[float, int] | None = None  # (mtime, size) at the last read
        self._digest = applied

    def changed(self) -> tuple[PoolConfig, str] | None:
        try:
            stat = self.path.stat()
        except OSError as exc:
            if self._seen != (-1.0, -1):
                log.error("pool config %s cannot be read (%s); the config in force stays",
                          self.path, exc.strerror or exc)
                self._seen = (-1.0, -1)
            return None
        if self._seen == (stat.st_mtime, stat.st_size):
            return None
        self._seen = (stat.st_mtime, stat.st_size)
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            log.error("pool config %s cannot be read (%s); the config in force stays",
                      self.path, exc)
            return None
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._digest:
            return None  # touched, not changed
        self._digest = digest
        try:
            return PoolConfig.parse(text, str(self.path)), digest
        except InvalidInput as exc:
            log.error("pool config %s refused, the config in force stays: %s", self.path, exc)
            return None
