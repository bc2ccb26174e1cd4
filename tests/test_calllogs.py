"""Per-callback logs: the bounded store, GET /admin/logs, the live tail (server-sent events)
across instances, JSON server logs with the operationID, and recordings by operationID.

End-to-end tests run real ``scriptgate serve`` processes on a real ``redis-server``; the
store bounds are checked in process against a real Redis too.
"""

from __future__ import annotations

import http.client
import queue
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from server.calllogs import CallLogs, Filter, build_record, parse_since, search
from server.config import LogSettings
from tests.gojson import go_headers
from tests.server_proc import ServerProc, start_server
from tests.timing import FAR_S

FRIEND = "callbackBeforeAddFriendCommand"
INVITE = "callbackBeforeInviteJoinGroupCommand"
LOGGING = "def handle(req):\n    log('checking', req.get('fromUserID'))\n    return deny(5001, 'no')\n"
FAILING = "def handle(req):\n    log('about to fail')\n    return 1 / 0\n"


class Tail:
    """``GET /admin/logs/stream`` read in a thread: events (parsed) and comments, in order."""

    def __init__(self, server: ServerProc, query: str = "") -> None:
        self.items: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=FAR_S)
        self.conn.request("GET", f"/admin/logs/stream{query}", headers={"Authorization": f"Bearer {server.token}"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                line = self.response.readline()
                if not line:
                    break
                text = line.decode().rstrip("\n")
                if text.startswith("data: "):
                    self.items.put(("event", orjson.loads(text[6:])))
                elif text.startswith(":"):
                    self.items.put(("comment", text[1:].strip()))
        except Exception as exc:  # the test closed the connection
            self.items.put(("closed", repr(exc)))

    def next(self, kind: str = "event") -> Any:
        deadline = time.monotonic() + FAR_S
        while True:
            got_kind, value = self.items.get(timeout=max(0.01, deadline - time.monotonic()))
            if got_kind == kind:
                return value

    def close(self) -> None:
        self.conn.close()


def config_file(tmp_path: Any, text: str) -> str:
    path = tmp_path / "scriptgate.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def pair(redis_standalone: Any, tmp_path: Any):
    """Two instances on one Redis (JSON server logs, a short keep-alive)."""
    prefix = "logs" + uuid.uuid4().hex[:8]
    cfg = config_file(tmp_path, 'log_format = "json"\n[logs]\nkeepalive_s = 0.2\n')
    a = start_server("--redis", redis_standalone.url, "--prefix", prefix, "--config", cfg)
    b = start_server("--redis", redis_standalone.url, "--prefix", prefix, "--config", cfg)
    yield a, b
    a.stop()
    b.stop()


def wait_logs(server: ServerProc, query: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + FAR_S
    while True:
        r = server.request("GET", f"/admin/logs{query}")
        assert r.status == 200, r.body
        assert r.headers["content-type"] == "application/x-ndjson"
        records = [orjson.loads(line) for line in r.body.splitlines() if line]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def test_logs_are_kept_searched_and_tailed_across_instances(pair: tuple[ServerProc, ServerProc]) -> None:
    a, b = pair
    assert a.upload(FRIEND, LOGGING).status == 201
    assert a.upload(INVITE, FAILING).status == 201
    everything = Tail(b)
    errors = Tail(b, "?errors=1")
    one_op = Tail(a, "?operationID=op-2")
    assert everything.next("comment") == "connected" and errors.next("comment") == "connected"
    assert one_op.next("comment") == "connected"
    try:
        # Callbacks answered by instance a; the tails on b (and on a) see them.
        a.callback(FRIEND, {"callbackCommand": FRIEND, "fromUserID": "u1", "toUserID": "u2", "operationID": "op-1"},
                   headers=go_headers("op-1"))
        a.callback(INVITE, {"callbackCommand": INVITE, "groupID": "g", "invitedUserIDs": ["x"], "operationID": "op-2"},
                   headers=go_headers("op-2"))
        first, second = everything.next(), everything.next()
        assert {first["operationID"], second["operationID"]} == {"op-1", "op-2"}
        friend = first if first["command"] == FRIEND else second
        assert friend["verdict"] == "deny" and friend["logs"] == ["checking u1"] and friend["level"] == "info"
        assert friend["version"] == 1 and friend["ts"].endswith("Z") and friend["elapsed_ms"] >= 0
        failed = errors.next()  # the error tail skips the deny
        assert failed["operationID"] == "op-2" and failed["level"] == "error" and failed["verdict"] == "error"
        assert failed["error_kind"] and "ZeroDivisionError" in failed["error"] and failed["logs"] == ["about to fail"]
        assert one_op.next()["command"] == INVITE
        assert everything.next("comment") == "keep-alive"  # idle: comments keep proxies from closing it
    finally:
        for tail in (everything, errors, one_op):
            tail.close()

    # Searchable from either instance.
    both = wait_logs(b, "", 2)
    assert [r["operationID"] for r in both] == ["op-1", "op-2"]  # oldest first
    assert [r["operationID"] for r in wait_logs(a, "?operationID=op-1", 1)] == ["op-1"]
    assert [r["command"] for r in wait_logs(a, f"?command={INVITE}", 1)] == [INVITE]
    assert [r["operationID"] for r in wait_logs(a, "?level=error", 1)] == ["op-2"]
    assert [r["operationID"] for r in wait_logs(a, "?limit=1", 1)] == ["op-2"]  # the newest
    assert wait_logs(a, "?since=2999-01-01T00:00:00Z", 0) == []
    assert len(wait_logs(a, "?since=0", 2)) == 2
    for bad in ("limit=0", "limit=x", "level=warn", "since=yesterday", "command=nope", "errors=maybe",
                "operationID=" + "x" * 129):
        path = "/admin/logs/stream?" if bad.startswith("errors") else "/admin/logs?"
        r = a.request("GET", path + bad)
        assert r.status == 400 and r.json()["error"] == "bad_parameter", (bad, r.status, r.body)

    assert 'scriptgate_callback_logs_total{outcome="written"} 2.0' in a.request("GET", "/metrics").body.decode()

    # JSON server logs: the script error's line carries the operationID as a field.
    line = a.wait_line(r'"operationID":"op-2"')
    record = orjson.loads(line.string)
    assert record["command"] == INVITE and record["level"] == "warning" and "ZeroDivisionError" in record["message"]


def test_recordings_honour_the_operation_id_filter(redis_standalone: Any) -> None:
    server = start_server("--redis", redis_standalone.url, "--prefix", "rec" + uuid.uuid4().hex[:8], "--record")
    try:
        for i in range(5):
            server.callback(FRIEND, {"callbackCommand": FRIEND, "operationID": f"op-{i % 2}"},
                            headers=go_headers(f"op-{i % 2}"))
        deadline = time.monotonic() + FAR_S
        while True:
            r = server.request("GET", f"/admin/recordings/{FRIEND}?operationID=op-1")
            ops = [orjson.loads(x)["operationID"] for x in r.body.splitlines()]
            if len(ops) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert ops == ["op-1", "op-1"]
        r = server.request("GET", f"/admin/recordings/{FRIEND}?operationID=op-0&limit=2")
        assert [orjson.loads(x)["operationID"] for x in r.body.splitlines()] == ["op-0", "op-0"]
    finally:
        server.stop()


# --- the store's bounds (in process, real Redis) --------------------------------------------

def outcome(logs: list[str], verdict: str = "allow") -> Any:
    return SimpleNamespace(version=3, verdict=verdict, error=None, logs=logs)


def test_a_record_over_max_record_bytes_has_its_log_lines_cut() -> None:
    data = build_record(FRIEND, "op", outcome(["x" * 1000] * 50), 0.001, 4096)
    assert len(data) <= 4096
    record = orjson.loads(data)
    assert record["logs"][-1].startswith("[") and "log lines cut" in record["logs"][-1]
    assert 1 < len(record["logs"]) < 50
    small = orjson.loads(build_record(FRIEND, "op", outcome(["a", "b"]), 0.001, 4096))
    assert small["logs"] == ["a", "b"] and small["level"] == "info"


def test_parse_since_takes_iso_and_unix_seconds() -> None:
    assert parse_since("1700000000.5") == 1_700_000_000_500
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000_000
    for bad in ("yesterday", "inf", "nan", ""):
        with pytest.raises(ValueError):
            parse_since(bad)


def test_streams_are_capped_by_count_bytes_and_age(redis_standalone: Any) -> None:
    import asyncio

    from server.store.connect import open_store

    async def main() -> None:
        store = await open_store(redis_standalone.url, prefix="cap" + uuid.uuid4().hex[:8])
        try:
            state = SimpleNamespace(store=store)
            # Count: at most max_records (approximate trimming keeps a little more).
            logs = CallLogs(state, LogSettings(max_records=50, max_bytes=10**9))
            for i in range(2000):
                logs.submit(FRIEND, f"op-{i}", outcome([]), 0.001)
            await logs.flush()
            count = await store.client.xlen(store.keys.logs(FRIEND))
            assert count <= 50 + 200, count  # XADD MAXLEN ~ trims whole nodes (100 entries each)
            newest = await search(store, Filter(command=FRIEND), 0, 1)
            assert orjson.loads(newest[0])["operationID"] == "op-1999"
            # Bytes: records of ~2 KB with max_bytes 100 KB keep about 50.
            logs = CallLogs(state, LogSettings(max_records=10_000, max_bytes=100_000, max_record_bytes=4096))
            for i in range(2000):
                logs.submit(INVITE, f"op-{i}", outcome(["y" * 2000]), 0.001)
            await logs.flush()
            count = await store.client.xlen(store.keys.logs(INVITE))
            assert count <= 50 + 200, count
            assert logs.maxlen(INVITE, 2100) <= 50
            # Age: the stream expires with max_age_s, and older entries are trimmed by id.
            logs = CallLogs(state, LogSettings(max_age_s=100))
            logs.submit(FRIEND, "op-age", outcome([]), 0.001)
            await logs.flush()
            ttl = await store.client.ttl(store.keys.logs(FRIEND))
            assert 0 < ttl <= 100
            assert await store.log_commands() == sorted([FRIEND, INVITE])
        finally:
            await store.close()

    asyncio.run(main())


def test_submit_never_blocks_and_drops_when_the_queue_is_full() -> None:
    logs = CallLogs(SimpleNamespace(store=None), LogSettings())
    from server import calllogs

    for _ in range(calllogs.QUEUE_LIMIT + 10):
        logs.submit(FRIEND, "op", outcome([]), 0.001)
    assert logs.queue.qsize() == calllogs.QUEUE_LIMIT and logs.dropped == 10


@pytest.mark.parametrize("backend", ["redis_standalone", "redis_cluster"])
def test_live_hub_and_search_on_each_backend(backend: str, request: pytest.FixtureRequest) -> None:
    """A record written through one store object reaches a live reader of another (as
    between instances), and is found by search, on a standalone Redis and on a Cluster."""
    import asyncio

    from server.calllogs import LiveHub
    from server.store.connect import open_store

    url = request.getfixturevalue(backend).url

    async def main() -> None:
        prefix = "hub" + uuid.uuid4().hex[:8]
        writer_store = await open_store(url, prefix=prefix)
        reader_store = await open_store(url, prefix=prefix)
        hub = LiveHub(reader_store)
        try:
            async with hub.reader() as queue:
                await asyncio.wait_for(hub.subscribed.wait(), FAR_S)
                logs = CallLogs(SimpleNamespace(store=writer_store), LogSettings())
                logs.submit(FRIEND, "op-live", outcome(["hello"]), 0.001)
                # One batch (one store round trip, one published message) of three records
                # for two commands: a tail still gets them one by one.
                logs.submit(INVITE, "op-b1", outcome(["a\nb"]), 0.001)
                logs.submit(FRIEND, "op-b2", outcome([]), 0.001)
                await logs.flush()
                got = [orjson.loads(await asyncio.wait_for(queue.get(), FAR_S)) for _ in range(3)]
                assert [g["operationID"] for g in got] == ["op-live", "op-b1", "op-b2"]
                assert got[0]["logs"] == ["hello"] and got[1]["logs"] == ["a\nb"]
            found = await search(reader_store, Filter(operation_id="op-live"), 0, 10)
            assert [orjson.loads(r)["command"] for r in found] == [FRIEND]
            found = await search(reader_store, Filter(), 0, 10)
            assert sorted(orjson.loads(r)["operationID"] for r in found) == ["op-b1", "op-b2", "op-live"]
        finally:
            await hub.close()
            await writer_store.close()
            await reader_store.close()

    asyncio.run(main())


def test_a_search_right_after_a_callback_finds_it(redis_standalone: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer lingers to batch records; ``settled`` (called by GET /admin/logs) cuts the
    linger short, so this process's callbacks so far are found at once."""
    import asyncio

    import server.calllogs as calllogs_module
    from server.store.connect import open_store

    monkeypatch.setattr(calllogs_module, "LINGER_S", 30.0)  # would outlast the test without the wake-up

    async def main() -> None:
        store = await open_store(redis_standalone.url, prefix="set" + uuid.uuid4().hex[:8])
        logs = CallLogs(SimpleNamespace(store=store), LogSettings())
        writer = asyncio.create_task(logs.run())
        try:
            logs.submit(FRIEND, "op-now", outcome(["x"]), 0.001)
            await asyncio.sleep(0)  # the writer holds the record, lingering
            await asyncio.wait_for(logs.settled(timeout=FAR_S), FAR_S)
            found = await search(store, Filter(operation_id="op-now"), 0, 10)
            assert [orjson.loads(r)["operationID"] for r in found] == ["op-now"]
            assert logs.written == 1
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await store.close()

    asyncio.run(main())
