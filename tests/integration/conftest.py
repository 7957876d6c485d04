"""Fixtures for integration tests: a real multi-node Ray cluster with the mesh on it, shared
by a module's tests, and the accounts that one test creates on it.

The mesh has module scope, because Ray allows one cluster connection per process and some
modules need a cluster of their own shape (no agents at all, nodes that get killed).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mesh.client import Client
from tests.integration.cluster import BIG, SMALL, Accounts, Mesh, start_mesh, stop_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    cluster, config, (big, small) = start_mesh(tmp_path_factory.mktemp("mesh"), BIG, SMALL)
    try:
        client = Client()
        yield Mesh(cluster, client, config, big, small)
    finally:
        stop_mesh(cluster)


@pytest.fixture
def accounts(mesh: Mesh) -> Iterator[Accounts]:
    """Accounts a test creates on the module's shared mesh, removed after the test with
    whatever of theirs is unfinished."""
    owned = Accounts(mesh.client)
    try:
        yield owned
    finally:
        owned.remove()
