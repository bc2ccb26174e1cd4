"""GET /admin/recordings/{command} reads the store a page at a time and streams: the same
records as one read (``Store.recordings``), in order, for every limit / since; a store
failure after the first page cuts the response off instead of ending it as if complete."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import tornado.httpclient
import tornado.netutil

from server.cli.admin_client import AdminClient, AdminError
from server.config import Config
from server.http import admin_records as http_admin
from server.http.conn import Server as HTTPServer
from server.serve import http_server
from server.service.state import build_state
from server.store.base import StoreUnavailable
from server.store.connect import open_store

CMD = "callbackBeforeInviteJoinGroupCommand"
TOKEN = "token"


class NoPool:
    async def run(self, **_: Any) -> Any:
        raise AssertionError("no script runs here")

    async def close(self) -> None:
        pass


async def _serve(store: Any) -> tuple[HTTPServer, int]:
    state = await build_state(Config(), TOKEN, store=store, pool=NoPool())
    http = http_server(state)  # the server `scriptgate serve` runs: paged answers on its HTTP layer
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    http.add_sockets(sockets)
    return http, sockets[0].getsockname()[1]


async def _get(port: int, query: str) -> list[dict[str, Any]]:
    client = tornado.httpclient.AsyncHTTPClient()
    r = await client.fetch(f"http://127.0.0.1:{port}/admin/recordings/{CMD}{query}",
                           headers={"Authorization": f"Bearer {TOKEN}"}, request_timeout=30)
    assert r.code == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in r.body.splitlines()]


@pytest.mark.parametrize("page", [1, 7, 1000])
def test_pages_return_what_one_read_returns(monkeypatch: pytest.MonkeyPatch, page: int) -> None:
    monkeypatch.setattr(http_admin, "RECORDINGS_PAGE", page)

    async def main() -> None:
        store = await open_store(None, prefix="paged", isolated=True)
        t0 = time.time()
        for i in range(60):
            await store.record(CMD, {"i": i}, maxlen=1000)
        http, port = await _serve(store)
        try:
            for limit in (1, 6, 7, 8, 14, 59, 60, 61, 1000):
                want = [r["i"] for r in await store.recordings(CMD, limit, None)]
                assert [r["i"] for r in await _get(port, f"?limit={limit}")] == want, limit
                want = [r["i"] for r in await store.recordings(CMD, limit, t0 - 1)]
                assert [r["i"] for r in await _get(port, f"?limit={limit}&since={t0 - 1}")] == want, limit
            assert await _get(port, f"?since={time.time() + 10}") == []
            assert [r["i"] for r in await _get(port, "")] == list(range(60))  # default limit 1000
        finally:
            http.stop()
            await store.close()

    asyncio.run(main())


def test_a_store_failure_after_the_first_page_cuts_the_response_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_admin, "RECORDINGS_PAGE", 5)

    async def main() -> None:
        store = await open_store(None, prefix="paged-fail", isolated=True)
        for i in range(20):
            await store.record(CMD, {"i": i}, maxlen=1000)
        real_page = store.recordings_page
        calls = 0

        async def failing_page(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise StoreUnavailable("redis unavailable: test")
            return await real_page(*args)

        store.recordings_page = failing_page  # type: ignore[method-assign]
        http, port = await _serve(store)
        try:
            with pytest.raises((tornado.httpclient.HTTPError, OSError, tornado.iostream.StreamClosedError)):
                await _get(port, "?limit=20")
            # The CLI's client (scriptgate export) reports it as an error, not a short export.
            calls = 0
            client = AdminClient(f"http://127.0.0.1:{port}", TOKEN)

            def read_all() -> bytes:
                return b"".join(client.stream(f"/admin/recordings/{CMD}", {"limit": 20}))

            with pytest.raises(AdminError, match="connection failed while reading"):
                await asyncio.get_running_loop().run_in_executor(None, read_all)
            calls = 2  # the next read fails on its first page: nothing was sent, a JSON 503
            client = tornado.httpclient.AsyncHTTPClient()
            r = await client.fetch(f"http://127.0.0.1:{port}/admin/recordings/{CMD}",
                                   headers={"Authorization": f"Bearer {TOKEN}"}, raise_error=False)
            assert r.code == 503 and orjson.loads(r.body)["error"] == "store_unavailable"
        finally:
            http.stop()
            await store.close()

    asyncio.run(main())
