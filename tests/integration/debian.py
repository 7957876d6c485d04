"""Debian packages a test needs beside the project (Prometheus, sshd): found, or installed
when running in CI or when asked (ACTIONMESH_INSTALL_TEST_DEPS=1), else the test is skipped
saying what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import IN_CI

ASK = "ACTIONMESH_INSTALL_TEST_DEPS"
INSTALL_TIMEOUT = 900


def needed(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian's `package` first if allowed."""
    found = shutil.which(binary) or _sbin(binary)
    if found is not None:
        return found
    if not (IN_CI or os.environ.get(ASK) == "1"):
        pytest.skip(f"{binary} is not installed (Debian's {package}); set {ASK}=1 to let "
                    "the tests install it")
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(f"{binary} is missing and cannot be installed here (needs apt-get as "
                    "root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    done = subprocess.run(install, env=env, capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT, check=False)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                       timeout=INSTALL_TIMEOUT, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT, check=False)
    found = shutil.which(binary) or _sbin(binary)
    if found is None:
        pytest.fail(f"installing {package} did not give {binary}: {done.stderr[-2000:]}")
    return found


def _sbin(binary: str) -> str | None:
    path = f"/usr/sbin/{binary}"
    return path if os.access(path, os.X_OK) else None
