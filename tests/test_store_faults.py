"""Redis faults against real servers: down at start, killed mid-traffic, paused, slow,
failover; admin writes never half-apply."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from redis_servers import Standalone, free_port

from sandbox.api import KVUnavailable
from server.store.base import StoreError, StoreUnavailable
from server.store.connect import open_store
from server.store.redis_store import Store
from tests.timing import FAR_S, SLACK_S


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _eventually(check: Any, timeout: float = 10.0) -> float:
    """Poll an async check until it returns truthy; return how long it took."""
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if await check():
                return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, "condition not reached"
        await asyncio.sleep(0.02)


async def _timed(coro: Any) -> tuple[float, BaseException | None]:
    t0 = time.monotonic()
    try:
        await coro
        return time.monotonic() - t0, None
    except BaseException as exc:
        return time.monotonic() - t0, exc


async def assert_consistent(s: Store, command: str) -> int:
    """Every version 1..latest is complete, the live pointer names one of them, and the
    generation counts the script changes recorded in the audit log."""
    meta = await s.get_meta(command)
    if meta is None:
        return 0
    for n in meta.versions:
        info = await s.get_version(command, n)
        assert info is not None and info.source is not None and info.sha256, n
    assert await s.get_version(command, meta.latest_version + 1) is None
    if meta.active_version is not None:
        assert meta.active_version in meta.versions
    # An upload of the live source again changes nothing (its audit entry says "unchanged").
    entries = [e for e in await s.audit(limit=10_000) if e.target == command and not e.detail.get("unchanged")]
    assert await s.generation() == len(entries)
    assert sum(1 for e in entries if e.action == "upload") == meta.latest_version
    return meta.latest_version


def test_redis_down_at_start_then_recovers(tmp_path: Any, store_prefix: str) -> None:
    from conftest_redis import require_redis

    require_redis()
    port = free_port()
    url = f"redis://127.0.0.1:{port}"

    async def scenario() -> None:
        s = await open_store(url, prefix=store_prefix)  # does not raise
        try:
            assert s.healthy is False and s.describe()["connected"] is False
            assert await s.ping() is False
            took, exc = await _timed(s.kv_call("ns", "get", ["k"]))
            assert isinstance(exc, KVUnavailable) and took < 0.5 + SLACK_S
            took, exc = await _timed(s.put_version("cbA", "src", "h", True, "u"))
            assert isinstance(exc, StoreUnavailable) and took < 2.0 + SLACK_S
            assert "redis unavailable" in str(exc)
            for call in (s.list_scripts(), s.active_table(), s.generation(), s.audit(), s.kv_read("ns", "k")):
                assert isinstance((await _timed(call))[1], StoreUnavailable)
            server = Standalone(tmp_path / "late")
            server.server.stop()
            server.server.port = port
            server.server.start()
            try:
                await _eventually(s.ping, FAR_S)
                assert s.healthy
                await s.kv_call("ns", "set", ["k", "v", None])
                assert await s.kv_call("ns", "get", ["k"]) == "v"
                assert s.tracker is not None and await s.tracker.wait_connected(FAR_S)
                await s.put_version("cbA", "src", "h", True, "u")
                assert await assert_consistent(s, "cbA") == 1
            finally:
                server.close()
        finally:
            await s.close()

    run(scenario())


def test_redis_killed_mid_traffic(redis_factory: Any, store_prefix: str) -> None:
    server = redis_factory()

    async def scenario() -> None:
        s = await open_store(server.url, prefix=store_prefix)
        watcher_store = await open_store(server.url, prefix=store_prefix)
        seen: list[int] = []

        async def listener() -> None:
            table = await watcher_store.active_table()
            seen.append(table["cbA"].version if "cbA" in table else 0)

        watcher = asyncio.create_task(watcher_store.watch(listener, poll_interval=0.5))
        outcomes: list[tuple[float, str]] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                t0 = time.monotonic()
                try:
                    await s.kv_call("ns", "incr", ["hits", 1, None])
                    await s.kv_call("ns", "sismember", ["bl", "u"])
                    outcomes.append((time.monotonic() - t0, "ok"))
                except KVUnavailable:
                    outcomes.append((time.monotonic() - t0, "down"))
                    await asyncio.sleep(0.01)

        try:
            await s.put_version("cbA", "v1", "h", True, "u")
            task = asyncio.create_task(traffic())
            await _eventually(lambda: asyncio.sleep(0, len(outcomes) >= 5), FAR_S)  # traffic flows
            server.server.kill()
            await _eventually(lambda: asyncio.sleep(0, not s.healthy), FAR_S)
            took, exc = await _timed(s.put_version("cbA", "v2", "h", True, "u"))
            assert isinstance(exc, StoreUnavailable) and took < 2.0 + SLACK_S
            server.server.start()  # same port, empty (no persistence in tests)
            await _eventually(lambda: asyncio.sleep(0, s.healthy and outcomes[-1][1] == "ok"), FAR_S)
            stop.set()
            await task
            kinds = [k for _, k in outcomes]
            assert "down" in kinds and kinds[-1] == "ok"
            assert max(t for t, _ in outcomes) < 0.5 + SLACK_S  # nothing hung (op timeout 0.5 s)
            # the watcher survived the outage and sees changes made after it
            await s.put_version("cbA", "v-after", "h", True, "u")
            await _eventually(lambda: asyncio.sleep(0, bool(seen) and seen[-1] == 1), FAR_S)
        finally:
            stop.set()
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            await s.close()
            await watcher_store.close()

    run(scenario())


def test_paused_redis_fails_fast_and_recovers(redis_factory: Any, store_prefix: str) -> None:
    server = redis_factory()

    async def scenario() -> None:
        s = await open_store(server.url, prefix=store_prefix)
        try:
            await s.kv_call("ns", "set", ["k", "v", None])
            server.server.pause()  # SIGSTOP: connections stay open, nothing answers
            try:
                took, exc = await _timed(s.kv_call("ns", "get", ["k2"]))
                assert isinstance(exc, KVUnavailable) and took < 0.5 + SLACK_S
                took, exc = await _timed(s.activate("cbA", 1, "u"))
                assert isinstance(exc, StoreUnavailable) and took < 2.0 + SLACK_S
                assert s.healthy is False
            finally:
                server.server.resume()
            await _eventually(s.ping, FAR_S)
            assert await s.kv_call("ns", "get", ["k"]) == "v"
        finally:
            await s.close()

    run(scenario())


class StallingProxy:
    """A TCP relay in front of Redis that can hold every byte in both directions: a server
    that has stopped answering, switched on and off exactly when the test says (racing a
    thread's DEBUG SLEEP against a fixed sleep was luck). Late replies are delivered on
    release, as a slow server's would be."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                await self.flowing.wait()
                dst.write(data)
                await dst.drain()
        dst.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def test_slow_redis_times_out(redis_standalone: Any, store_prefix: str) -> None:
    async def scenario() -> None:
        proxy = StallingProxy(redis_standalone.port)
        s = await open_store(await proxy.start(), prefix=store_prefix, cache=False)
        try:
            await s.kv_call("ns", "set", ["k", "v", None])
            proxy.flowing.clear()  # from now on Redis "takes forever"
            took, exc = await _timed(s.kv_call("ns", "get", ["k"]))
            # ended by the store's 0.5 s operation timeout (timers never fire early)
            assert isinstance(exc, KVUnavailable) and 0.3 < took < 0.5 + SLACK_S, (took, exc)
            took, exc = await _timed(s.list_scripts())
            assert isinstance(exc, StoreUnavailable) and took < 2.0 + SLACK_S, (took, exc)
            proxy.flowing.set()  # the late replies arrive; none may be taken for a later call's
            await _eventually(s.ping, FAR_S)
            assert await s.kv_call("ns", "get", ["k"]) == "v"
            assert await s.kv_call("ns", "get", ["missing"]) is None
        finally:
            await s.close()
            await proxy.close()

    run(scenario())


@pytest.mark.parametrize("fault", ["pause", "kill", "conflict"])
def test_version_write_is_all_or_nothing(redis_factory: Any, store_prefix: str, fault: str) -> None:
    """A fault between reading the version counter and EXEC: the upload either fully
    happens or not at all, and the registry stays consistent."""
    server = redis_factory()

    async def scenario() -> None:
        s = await open_store(server.url, prefix=store_prefix)
        other = await open_store(server.url, prefix=store_prefix)
        try:
            await s.put_version("cbA", "v1", "h1", True, "u")
            fired = False

            async def inject() -> None:
                nonlocal fired
                if fired:
                    return
                fired = True
                if fault == "pause":
                    server.server.pause()  # resumed once the write has given up
                elif fault == "kill":
                    server.server.kill()
                else:  # another instance uploads in between: WATCH makes this one retry
                    await other.put_version("cbA", "other", "h-other", False, "o")

            s.txn.before_exec = inject
            result: Any = None
            try:
                result = await s.put_version("cbA", "v2", "h2", True, "u")
            except StoreUnavailable:
                result = None
            s.txn.before_exec = None
            if fault == "kill":
                assert result is None
                server.server.start()
                await _eventually(s.ping, FAR_S)
                assert await assert_consistent(s, "cbA") == 0  # the server came back empty
                return
            if fault == "pause":
                assert result is None  # timed out waiting for EXEC's reply
                server.server.resume()
                await _eventually(s.ping, FAR_S)
            latest = await assert_consistent(s, "cbA")
            if fault == "conflict":
                info, prev = result
                assert (info.version, prev, latest) == (3, 1, 3)
                assert (await s.get_version("cbA", 2)).source == "other"  # type: ignore[union-attr]
            else:
                # EXEC had been sent: applied as a whole after the pause, or not at all
                assert latest in (1, 2)
                if latest == 2:
                    assert (await s.get_version("cbA", 2)).source == "v2"  # type: ignore[union-attr]
                    assert (await s.active_table())["cbA"].version == 2
        finally:
            await s.close()
            await other.close()

    run(scenario())


def test_admin_errors_are_not_outages(redis_standalone: Any, store_prefix: str) -> None:
    async def scenario() -> None:
        s = await open_store(redis_standalone.url, prefix=store_prefix)
        try:
            with pytest.raises(StoreError):
                await s.activate("cbA", 1, "u")
            assert s.healthy
        finally:
            await s.close()

    run(scenario())


def test_sentinel_failover_under_traffic(sentinel_factory: Any, store_prefix: str) -> None:
    setup = sentinel_factory()

    async def scenario() -> None:
        s = await open_store(setup.url, prefix=store_prefix)
        try:
            await s.put_version("cbA", "v1", "h", True, "u")
            await s.kv_call("ns", "sadd", ["bl", ["x"]])
            with setup.current_master().client() as c:
                c.execute_command("WAIT", 1, 2000)
            old = setup.master_port()
            new = await asyncio.to_thread(setup.failover)
            assert new != old
            # The store follows Sentinel by itself within ~1 s (it asks every second; the
            # demoted master would otherwise keep taking writes until Sentinel
            # reconfigures it, which takes several seconds).
            pool = s.client.connection_pool
            await _eventually(lambda: asyncio.sleep(0, pool.master_address is not None
                                                     and int(pool.master_address[1]) == new), 1.0 + SLACK_S)
            t0 = time.monotonic()
            while True:
                try:
                    await s.put_version("cbA", "v2", "h", True, "u")
                    break
                except StoreUnavailable:
                    assert time.monotonic() - t0 < FAR_S
                    await asyncio.sleep(0.05)
            assert await s.kv_call("ns", "sismember", ["bl", "x"]) is True  # replicated data kept
            assert (await s.active_table())["cbA"].version == 2
            assert s.describe()["mode"] == "sentinel"
            with setup.current_master().client() as c:  # written to the new master
                assert c.hget(s.keys.active, "cbA") == "2"
        finally:
            await s.close()

    run(scenario())


def test_embedded_server_for_multiprocess(store_prefix: str) -> None:
    import os
    import stat

    from server.store.connect import start_embedded_server

    url, stop = start_embedded_server()
    path = url.removeprefix("unix://").partition("?")[0]
    try:
        # Reachable by this user only: a private directory, no TCP port.
        assert url.startswith("unix://")
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
        async def scenario() -> None:
            a = await open_store(url, prefix=store_prefix)
            b = await open_store(url, prefix=store_prefix)
            try:
                info = a.describe()
                assert (info["mode"], info["url"], info["persistent"]) == ("embedded", "embedded", False)
                await a.put_version("cbA", "src", "h", True, "u")
                assert (await b.active_table())["cbA"].source == "src"
                await a.kv_call("ns", "sadd", ["bl", ["x"]])
                assert await b.kv_call("ns", "sismember", ["bl", "x"]) is True
                assert b.tracker is None  # its URL says cache=no: fakeredis has no CLIENT TRACKING
            finally:
                await a.close()
                await b.close()

        run(scenario())
    finally:
        stop()
    assert not os.path.exists(os.path.dirname(path))


def test_watch_ends_when_cancelled_as_a_change_arrives() -> None:
    """Regression: Store.watch waited with wait_for, which on Python 3.11 returns instead of
    raising when the cancellation lands just as the change event is set; the watch loop then
    ran on forever and ``watcher.cancel(); await watcher`` hung (seen as a 120 s timeout of
    test_redis_killed_mid_traffic under load). Every phase of the race is tried, no timing luck."""

    async def scenario() -> list[int]:
        hung = []
        for phase in range(8):  # event-loop turns between the change and the cancel
            store = object.__new__(Store)  # only watch() runs: generation and the subscriber are fakes
            box: dict[str, asyncio.Event] = {}
            subscribed = asyncio.Event()

            async def generation() -> int:
                return 0

            async def subscribe(changed: asyncio.Event, box: dict[str, asyncio.Event] = box,
                                subscribed: asyncio.Event = subscribed) -> None:
                box["changed"] = changed
                subscribed.set()
                await asyncio.Event().wait()

            async def listener() -> None:
                pass

            store.generation = generation  # type: ignore[method-assign]
            store._subscribe = subscribe  # type: ignore[method-assign]
            watcher = asyncio.create_task(store.watch(listener, poll_interval=5.0))
            await subscribed.wait()
            for _ in range(5):
                await asyncio.sleep(0)  # the watch loop is now waiting for a change
            box["changed"].set()
            for _ in range(phase):
                await asyncio.sleep(0)
            watcher.cancel()
            done, _ = await asyncio.wait({watcher}, timeout=2.0)
            if not done:
                hung.append(phase)
                while not watcher.done():
                    watcher.cancel()
                    await asyncio.wait({watcher}, timeout=0.1)
        return hung

    assert run(scenario()) == []


def test_watch_ends_when_a_call_below_swallows_its_cancellation() -> None:
    """Regression: a cancellation swallowed inside a Redis call (redis-py or 3.11's wait_for
    returning a reply that raced it) left Store.watch looping forever, seen under load as
    ``await watcher`` hanging in test_redis_killed_mid_traffic. The watch loop ends anyway."""

    async def scenario() -> bool:
        store = object.__new__(Store)  # only watch() runs: generation and the subscriber are fakes
        entered = asyncio.Event()

        swallowed: list[bool] = []

        async def generation() -> int:
            entered.set()
            if not swallowed:  # once: what a library below may do
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(1.0)
                swallowed.append(True)
            return 0

        async def subscribe(changed: asyncio.Event) -> None:
            await asyncio.Event().wait()

        async def listener() -> None:
            pass

        store.generation = generation  # type: ignore[method-assign]
        store._subscribe = subscribe  # type: ignore[method-assign]
        watcher = asyncio.create_task(store.watch(listener, poll_interval=0.05))
        await entered.wait()
        watcher.cancel()
        done, _ = await asyncio.wait({watcher}, timeout=5.0)
        while not watcher.done():
            watcher.cancel()
            await asyncio.wait({watcher}, timeout=0.1)
        return bool(done)

    assert run(scenario())
