"""Secrets at rest: the key file beside the state database, and the sealing of an accepted
action's spec that holds secrets, so that the database alone does not give them away.

The key is 32 random bytes in `secrets.key` (0600, made with the database). A spec with
secrets is stored as `sealed:v1:` and the base64 of a 12-byte nonce plus its AES-256-GCM
ciphertext, whose tag also proves the key is the right one. AES-GCM comes from
`cryptography` (a well-kept library already in every install through Ray's own
dependencies): a cipher is not something to write here.
"""

from __future__ import annotations

import base64
import contextlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "secrets.key"
SEALED = "sealed:v1:"
_KEY_BYTES = 32
_NONCE_BYTES = 12
# Bound into every sealed spec: a ciphertext made for something else does not open as one.
_CONTEXT = b"actionmesh action spec"


class SealError(Exception):
    """A sealed spec that cannot be opened: the key file is missing, or another one."""


class Sealer:
    """Seals and opens specs with the state dir's key."""

    def __init__(self, key: bytes, path: Path) -> None:
        self._aead = AESGCM(key)
        self.path = path

    @classmethod
    def open(cls, directory: Path) -> Sealer:
        """The state dir's key, made (0600, never through a symlink) if it has none."""
        path = directory / KEY_FILE
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, base64.b64encode(os.urandom(_KEY_BYTES)) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            key = base64.b64decode(os.read(fd, 1024).strip(), validate=True)
        except ValueError as exc:
            raise SealError(f"{path} is not a key file: {exc}") from None
        finally:
            os.close(fd)
        if len(key) != _KEY_BYTES:
            raise SealError(f"{path} holds a {len(key)}-byte key, not {_KEY_BYTES}")
        return cls(key, path)

    def seal(self, text: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, text.encode(), _CONTEXT)
        return SEALED + base64.b64encode(nonce + sealed).decode()

    def open_text(self, text: str) -> str:
        """The spec as it was sealed; SealError if this key did not seal it."""
        try:
            raw = base64.b64decode(text[len(SEALED):], validate=True)
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:],
                                      _CONTEXT).decode()
        except (ValueError, InvalidTag):
            raise SealError(f"a sealed spec does not open with the key in {self.path}: the "
                            "key file was lost or replaced since it was saved") from None


def is_sealed(text: str) -> bool:
    return text.startswith(SEALED)
