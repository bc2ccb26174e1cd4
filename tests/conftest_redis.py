"""Pytest fixtures for real Redis servers (see ``redis_servers.py``).

Loaded by ``from conftest_redis import *`` in ``tests/conftest.py``. Session-scoped servers are
shared by every test of one pytest(-xdist) worker: tests keep apart by using their own
key prefix (``store_prefix``) and must not kill or fail over a shared server; the
``*_factory`` fixtures give a test private servers it may kill, pause or fail over.

Without ``redis-server`` the tests that need it are skipped, except under CI (``CI`` set),
where a missing server is an error: a green CI must mean the real backends were tested
(any other skip under CI fails too unless tests/skip_allowlist.py allows it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_servers import Cluster, SentinelSetup, Standalone, redis_available
from skip_allowlist import in_ci

__all__ = [
    "redis_cluster",
    "redis_factory",
    "redis_sentinel",
    "redis_standalone",
    "require_redis",
    "sentinel_factory",
    "store_prefix",
]


def require_redis() -> None:
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is not installed (apt-get install redis-server redis-sentinel)")
        pytest.skip("redis-server is not installed")


@pytest.fixture(scope="session")
def redis_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """A shared redis-server: ``.url``, ``.unix_url``, ``.port``, ``.client()``."""
    require_redis()
    server = Standalone(tmp_path_factory.mktemp("redis-standalone"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A shared 3-master Redis Cluster: ``.url`` (redis+cluster://...), ``.nodes``."""
    require_redis()
    cluster = Cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A shared master + replica + Sentinel: ``.url`` (redis+sentinel://...). No failovers here."""
    require_redis()
    setup = SentinelSetup(tmp_path_factory.mktemp("redis-sentinel"))
    yield setup
    setup.close()


@pytest.fixture
def redis_factory(tmp_path: Any) -> Iterator[Callable[..., Standalone]]:
    """``redis_factory(password=None, args=None) -> Standalone``: private servers, closed after the test."""
    require_redis()
    made: list[Standalone] = []

    def make(**kw: Any) -> Standalone:
        server = Standalone(tmp_path / f"redis{len(made)}", **kw)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def sentinel_factory(tmp_path: Any) -> Iterator[Callable[..., SentinelSetup]]:
    """``sentinel_factory() -> SentinelSetup``: a private Sentinel setup the test may fail over."""
    require_redis()
    made: list[SentinelSetup] = []

    def make(**kw: Any) -> SentinelSetup:
        setup = SentinelSetup(tmp_path / f"sentinel{len(made)}", **kw)
        made.append(setup)
        return setup

    yield make
    for setup in made:
        setup.close()


@pytest.fixture
def store_prefix() -> str:
    """A key prefix of its own for each test (parallel-safe on shared servers)."""
    return "t" + uuid.uuid4().hex[:12]
