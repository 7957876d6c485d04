"""Secrets at rest: the key file beside the state database, and the sealing of the secrets of
an accepted action, so that the database alone does not give them away.

The key is 32 random bytes, base64, in `secrets.key` (0600, made with the database). An
action's secrets are stored as the base64 of a 12-byte nonce plus their AES-256-GCM
ciphertext, bound to the action's id (a sealed value moved to another action's row does
not open there). AES-GCM comes from `cryptography` (a well-kept library already in every
install through Ray's own dependencies): a cipher is not something to write here.
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "secrets.key"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_CONTEXT = b"actionmesh secrets of action "


class SealError(Exception):
    """Sealed secrets that cannot be opened: the key file is missing, or another one."""


class Sealer:
    """Seals and opens actions' secrets with the state dir's key."""

    def __init__(self, key: bytes, path: Path) -> None:
        self._aead = AESGCM(key)
        self.path = path

    @classmethod
    def open(cls, directory: Path) -> Sealer:
        """The state dir's key, made if it has none: written whole to a file of its own,
        then linked into place, so that a crash never leaves a half-written key."""
        path = directory / KEY_FILE
        if not path.exists():
            fd, fresh = tempfile.mkstemp(prefix=".key-", dir=directory)  # 0600
            try:
                os.write(fd, base64.b64encode(os.urandom(_KEY_BYTES)) + b"\n")
                os.fsync(fd)
                os.close(fd)
                with contextlib.suppress(FileExistsError):  # another made it first
                    os.link(fresh, path)
            finally:
                os.unlink(fresh)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o600)
            key = base64.b64decode(os.read(fd, 1024).strip(), validate=True)
        except ValueError as exc:
            raise SealError(f"{path} is not a key file: {exc}") from None
        finally:
            os.close(fd)
        if len(key) != _KEY_BYTES:
            raise SealError(f"{path} holds a {len(key)}-byte key, not {_KEY_BYTES}")
        return cls(key, path)

    def seal(self, text: str, action_id: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, text.encode(), _CONTEXT + action_id.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open_text(self, sealed: str, action_id: str) -> str:
        """The text `seal` was given for this action; SealError if this key did not seal
        it, or not for this action."""
        try:
            raw = base64.b64decode(sealed, validate=True)
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:],
                                      _CONTEXT + action_id.encode()).decode()
        except (ValueError, InvalidTag):
            raise SealError(f"sealed secrets do not open with the key in {self.path}: the "
                            "key file was lost or replaced since they were saved") from None
