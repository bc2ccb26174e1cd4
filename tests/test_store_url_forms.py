"""Every ``--redis`` URL form the docs name, opened against a real server and used once.

test_store_common.py runs the whole Store contract on one URL per backend; this file covers
the other spellings of those URLs (docs/storage-and-faults.md's table), so that a URL a user
copies from the docs cannot be refused by whatever redis-py version is installed."""

from __future__ import annotations

import asyncio

import pytest

from server.store.connect import open_store
from tests.timing import SLACK_S


async def _round_trip(url: str, prefix: str) -> None:
    store = await open_store(url, prefix=prefix, op_timeout=SLACK_S)
    try:
        await store.kv_call("default", "set", ["url-form", "1", None])
        assert await store.kv_call("default", "get", ["url-form"]) == "1"
    finally:
        await store.close()


def _forms(request: pytest.FixtureRequest) -> list[str]:
    standalone = request.getfixturevalue("redis_standalone")
    cluster = request.getfixturevalue("redis_cluster")
    sentinel = request.getfixturevalue("redis_sentinel")
    host, port = "127.0.0.1", standalone.port
    seed = cluster.nodes[0].port
    return [
        f"redis://{host}:{port}",
        f"redis://{host}:{port}/0?timeout=2&health_check_interval=5",
        f"redis://localhost:{port}/3",
        standalone.unix_url,
        standalone.unix_url + "?db=2",
        f"REDIS://{host}:{port}",
        sentinel.url,
        sentinel.url + "/1",
        cluster.url,
        f"redis://{host}:{seed}?cluster=true",
    ]


def test_every_documented_url_form_opens_and_works(request: pytest.FixtureRequest, store_prefix: str) -> None:
    failures: list[str] = []
    for url in _forms(request):
        try:
            asyncio.run(_round_trip(url, store_prefix))
        except Exception as exc:  # collect all, so one run names every broken form
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)
