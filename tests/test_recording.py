"""Recording of callbacks: redaction, sampling, bounded queue off the critical path, and
end to end through ``scriptgate serve --record`` and ``GET /admin/recordings/{command}``."""

from __future__ import annotations

import asyncio
import random
import re
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from sandbox.api import ScriptError
from server import recorder as rec
from server.catalog import catalog
from server.config import CommandSettings, RecordSettings
from server.service.callbacks import Outcome
from tests.gojson import go_headers

CAT = catalog()
INVITE = "callbackBeforeInviteJoinGroupCommand"
FRIEND = "callbackBeforeAddFriendCommand"
SINGLE = "callbackBeforeSendSingleMsgCommand"
MEMBERS = "callbackBeforeMembersJoinGroupCommand"
ACK = {"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0}


# --- redaction ---------------------------------------------------------------------------

def test_redaction_top_level_nested_and_through_lists():
    data = {
        "content": "secret",
        "offlinePushInfo": {"title": "t", "desc": "d"},
        "memberList": [{"userID": "u1", "ex": "x1"}, {"userID": "u2", "ex": "x2"}, "odd"],
        "keep": 1,
    }
    out = rec.redact(data, ("content", "offlinePushInfo.title", "memberList.ex"))
    assert out == {
        "content": "[redacted]",
        "offlinePushInfo": {"title": "[redacted]", "desc": "d"},
        "memberList": [{"userID": "u1", "ex": "[redacted]"}, {"userID": "u2", "ex": "[redacted]"}, "odd"],
        "keep": 1,
    }
    assert data["content"] == "secret" and data["memberList"][0]["ex"] == "x1"  # original untouched


def test_redaction_parent_wins_and_missing_paths_share_the_original():
    assert rec.compile_redaction(("a.b", "a")) == {"a": True}
    assert rec.compile_redaction(("a", "a.b")) == {"a": True}
    data = {"x": {"y": 1}}
    assert rec.redact(data, ("content", "x.z")) == data
    assert rec.redact(data, ("content",)) is data  # nothing matched: no copy
    assert rec.redact(data, ()) is data
    assert rec.redact(data, ("x",)) == {"x": "[redacted]"}


# --- the recorder, in process --------------------------------------------------------------

class FakeStore:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any], int, int]] = []
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def record(self, command: str, entry: dict[str, Any], maxlen: int, max_age_s: int) -> str:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("redis down")
        self.records.append((command, entry, maxlen, max_age_s))
        return "1-0"


def make_recorder(settings: dict[str, RecordSettings], store: FakeStore | None = None) -> rec.Recorder:
    all_settings = {name: CommandSettings(record=settings.get(name, RecordSettings())) for name in CAT.commands}
    state = SimpleNamespace(dispatcher=SimpleNamespace(settings=all_settings), store=store or FakeStore())
    r = rec.Recorder.create(state)
    assert r is not None
    return r


def outcome(verdict: str = "allow", reply: dict[str, Any] | None = None, error: ScriptError | None = None) -> Outcome:
    return Outcome(reply=reply or dict(ACK), verdict=verdict, version=3, error=error)


def test_no_recorder_when_nothing_records():
    all_settings = {name: CommandSettings() for name in CAT.commands}
    state = SimpleNamespace(dispatcher=SimpleNamespace(settings=all_settings), store=None)
    assert rec.Recorder.create(state) is None


def test_record_fields_and_redaction_of_request_and_reply():
    async def go() -> None:
        store = FakeStore()
        r = make_recorder({SINGLE: RecordSettings(enabled=True, redact=("content",), max_records=7, max_age_s=60)}, store)
        cmd = CAT.get(SINGLE)
        payload = {"callbackCommand": SINGLE, "content": '{"content":"hi"}', "operationID": "body-op"}
        err = ScriptError("budget", "budget exceeded: steps")
        r.submit(cmd, payload, "hdr-op", outcome("error", {**ACK, "content": "x"}, err), 0.0123)
        r.submit(cmd, payload, "", outcome("deny"), 0.001)
        await r.flush()
        (c1, first, maxlen, age), (_, second, _, _) = store.records
        assert (c1, maxlen, age) == (SINGLE, 7, 60)
        assert set(first) == {"ts", "command", "operationID", "request", "reply", "version", "verdict",
                              "error_kind", "error", "elapsed_ms"}
        assert first["operationID"] == "hdr-op" and second["operationID"] == "body-op"
        assert first["request"]["content"] == "[redacted]" and first["reply"]["content"] == "[redacted]"
        assert payload["content"] == '{"content":"hi"}'
        assert (first["verdict"], first["error_kind"], first["error"]) == ("error", "budget", "budget exceeded: steps")
        assert first["version"] == 3 and first["elapsed_ms"] == 12.3
        assert abs(first["ts"] - time.time()) < 60
        assert second["error_kind"] is None and second["verdict"] == "deny"

    asyncio.run(go())


def test_only_enabled_commands_and_sampling():
    async def go() -> None:
        store = FakeStore()
        r = make_recorder({INVITE: RecordSettings(enabled=True, sample=0.25), FRIEND: RecordSettings(enabled=False)}, store)
        r._random = random.Random(7)
        for _ in range(2000):
            r.submit(CAT.get(INVITE), {}, "", outcome(), 0.0)
            r.submit(CAT.get(FRIEND), {}, "", outcome(), 0.0)
        await r.flush()
        assert {c for c, *_ in store.records} == {INVITE}
        assert 400 < len(store.records) < 600

    asyncio.run(go())


def test_submit_never_waits_for_the_store_and_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(rec, "QUEUE_LIMIT", 50)

    async def go() -> None:
        store = FakeStore()
        store.gate = asyncio.Event()  # the store hangs
        r = make_recorder({INVITE: RecordSettings(enabled=True)}, store)
        task = asyncio.create_task(r.run())
        # submit() is synchronous (it cannot wait for anything): 1000 of them return while the
        # store hangs, and the queue stays bounded.
        assert not asyncio.iscoroutinefunction(r.submit)
        for _ in range(1000):
            r.submit(CAT.get(INVITE), {"x": 1}, "", outcome(), 0.0)
        await asyncio.sleep(0)  # let run() take its first batch
        assert r.queue.qsize() <= 50
        assert r.dropped >= 1000 - 50 - rec.WRITE_BATCH
        store.gate.set()
        for _ in range(10_000):  # every queued record is written once the store answers
            if r.written + r.dropped == 1000:
                break
            await asyncio.sleep(0)
        task.cancel()
        assert r.written + r.dropped == 1000 and r.written >= 50

    asyncio.run(go())


def test_written_and_dropped_recordings_are_on_the_metrics():
    from server.metrics import Metrics

    async def go() -> None:
        store = FakeStore()
        all_settings = {name: CommandSettings(record=RecordSettings(enabled=name == INVITE)) for name in CAT.commands}
        metrics = Metrics()
        state = SimpleNamespace(dispatcher=SimpleNamespace(settings=all_settings), store=store, metrics=metrics)
        r = rec.Recorder.create(state)
        assert r is not None
        for fail in (True, True, False):
            store.fail = fail
            r.submit(CAT.get(INVITE), {}, "", outcome(), 0.0)
            await r.flush()
        text = metrics.render().decode()
        assert 'scriptgate_recordings_total{outcome="dropped"} 2.0' in text
        assert 'scriptgate_recordings_total{outcome="written"} 1.0' in text

    asyncio.run(go())


def test_store_failures_are_counted_and_recording_goes_on():
    async def go() -> None:
        store = FakeStore()
        r = make_recorder({INVITE: RecordSettings(enabled=True)}, store)
        store.fail = True
        r.submit(CAT.get(INVITE), {}, "", outcome(), 0.0)
        await r.flush()
        store.fail = False
        r.submit(CAT.get(INVITE), {}, "", outcome(), 0.0)
        await r.flush()
        assert (r.dropped, r.written, len(store.records)) == (1, 1, 1)

    asyncio.run(go())


# --- end to end ----------------------------------------------------------------------------

def get_records(server, command: str, query: str = "") -> list[dict[str, Any]]:
    r = server.request("GET", f"/admin/recordings/{command}{query}")
    assert r.status == 200, r.body
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in r.body.splitlines() if line]


def wait_records(server, command: str, n: int, timeout: float = 10) -> list[dict[str, Any]]:
    """Recording is asynchronous: poll until ``n`` records are visible."""
    deadline = time.monotonic() + timeout
    while True:
        got = get_records(server, command, "?limit=100000")
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


INVITE_SCRIPT = """
def handle(req):
    ids = req["invitedUserIDs"]
    if "boom" in ids:
        return 1 // 0
    if "evil" in ids:
        return deny(5001, "invitation refused", "evil")
    if "drop" in ids:  # the same users in another order: a modify OpenIM sees (narrowing would reject)
        return allow(invitedUserIDs=list(reversed(ids)))
    return allow()
"""


def invite(op: str, ids: list[str]) -> dict[str, Any]:
    return {"callbackCommand": INVITE, "operationID": op, "groupID": "g1", "reason": "", "invitedUserIDs": ids}


@pytest.fixture(scope="module")
def recording_server(tmp_path_factory):
    from tests.server_proc import start_server

    cfg = tmp_path_factory.mktemp("rec") / "scriptgate.toml"
    cfg.write_text(
        "[record]\n"
        "enabled = true\n"
        'redact = ["content", "memberList.ex"]\n'
        f"[record.commands.{FRIEND}]\n"
        "sample = 0.0\n"
    )
    srv = start_server("--config", str(cfg))
    yield srv
    srv.stop()


def test_every_verdict_is_recorded_with_request_reply_and_version(recording_server):
    srv = recording_server
    assert srv.callback(INVITE, invite("op-none", ["a"]), headers=go_headers("op-none")).status == 200
    version = srv.upload(INVITE, INVITE_SCRIPT).json()["version"]
    for op, ids in (("op-allow", ["a"]), ("op-modify", ["a", "drop"]), ("op-deny", ["evil"]), ("op-error", ["boom"])):
        assert srv.callback(INVITE, invite(op, ids), headers=go_headers(op)).status == 200
    records = {r["operationID"]: r for r in wait_records(srv, INVITE, 5)}
    assert records["op-none"]["verdict"] == "none" and records["op-none"]["version"] is None
    assert records["op-allow"]["verdict"] == "allow" and records["op-allow"]["version"] == version
    assert records["op-modify"]["verdict"] == "modify"
    assert records["op-modify"]["reply"]["invitedUserIDs"] == ["drop", "a"]
    assert records["op-deny"]["verdict"] == "deny" and records["op-deny"]["reply"]["errCode"] == 5001
    err = records["op-error"]
    assert err["verdict"] == "error" and err["error_kind"] == "exception" and "ZeroDivisionError" in err["error"]
    assert records["op-allow"]["request"] == invite("op-allow", ["a"])
    assert all(r["elapsed_ms"] > 0 and r["command"] == INVITE for r in records.values())
    ts = [r["ts"] for r in get_records(srv, INVITE)]
    assert ts == sorted(ts)  # oldest first
    metrics = srv.request("GET", "/metrics").body.decode()
    written = re.search(r'scriptgate_recordings_total\{outcome="written"\} (\d+)', metrics)
    assert written is not None and int(written.group(1)) >= 5, metrics[-2000:]


def test_limit_and_since(recording_server):
    srv = recording_server
    for i in range(6):
        srv.callback(INVITE, invite(f"lim-{i}", ["a"]))
    records = wait_records(srv, INVITE, 6)
    assert len(get_records(srv, INVITE, "?limit=2")) == 2
    assert get_records(srv, INVITE, "?limit=2") == records[-2:]  # the newest two, oldest first
    later = get_records(srv, INVITE, f"?since={records[-3]['ts'] + 0.5}")
    assert all(r["ts"] >= records[-3]["ts"] for r in later) and len(later) <= 3
    assert srv.request("GET", f"/admin/recordings/{INVITE}?since=yesterday").status == 400
    assert srv.request("GET", f"/admin/recordings/{INVITE}?limit=0").status == 400
    assert srv.request("GET", "/admin/recordings/callbackNope").status == 404
    assert srv.request("GET", f"/admin/recordings/{INVITE}", token="wrong").status == 401


def test_redaction_and_per_command_sampling_from_the_config(recording_server):
    srv = recording_server
    msg = {"callbackCommand": SINGLE, "sendID": "u1", "recvID": "u2", "content": '{"content":"secret"}',
           "operationID": "msg-1", "sessionType": 1, "contentType": 101}
    srv.callback(SINGLE, msg)
    members = {"callbackCommand": MEMBERS, "groupID": "g", "groupEx": "",
               "memberList": [{"userID": "u1", "ex": "private"}, {"userID": "u2", "ex": "p2"}]}
    srv.callback(MEMBERS, members)
    for _ in range(20):
        srv.callback(FRIEND, {"callbackCommand": FRIEND, "fromUserID": "a", "toUserID": "b", "reqMsg": "", "ex": ""})
    (single,) = wait_records(srv, SINGLE, 1)
    assert single["request"]["content"] == "[redacted]" and single["request"]["sendID"] == "u1"
    (member,) = wait_records(srv, MEMBERS, 1)
    assert member["request"]["memberList"] == [{"userID": "u1", "ex": "[redacted]"}, {"userID": "u2", "ex": "[redacted]"}]
    assert get_records(srv, FRIEND) == []  # sample = 0


def test_record_flag_records_every_command_and_the_cap_holds(tmp_path):
    from tests.server_proc import start_server

    cfg = tmp_path / "cap.toml"
    cfg.write_text(f"[record.commands.{FRIEND}]\nmax_records = 3\n")
    srv = start_server("--record", "--config", str(cfg))
    try:
        for i in range(300):
            srv.callback(FRIEND, {"callbackCommand": FRIEND, "fromUserID": f"u{i}", "toUserID": "b", "reqMsg": "", "ex": ""})
        srv.callback(INVITE, invite("x", ["a"]))
        assert len(wait_records(srv, INVITE, 1)) == 1
        # Trimming is approximate (MAXLEN ~), but a cap of 3 must keep far fewer than 300.
        deadline = time.monotonic() + 10
        while True:
            kept = get_records(srv, FRIEND, "?limit=100000")
            if kept and (len(kept) < 300 or time.monotonic() > deadline):
                break
            time.sleep(0.02)
        assert 0 < len(kept) < 300
        assert kept[-1]["request"]["fromUserID"] == "u299"
    finally:
        srv.stop()


def test_recordings_survive_a_restart_with_redis(redis_factory):
    # redis_factory (conftest_redis.py): a private server, and under CI no server is a failure.
    from tests.server_proc import start_server

    redis_server = redis_factory()
    srv = start_server("--record", "--redis", redis_server.url)
    try:
        srv.callback(INVITE, invite("before-restart", ["a"]), headers=go_headers("before-restart"))
        assert len(wait_records(srv, INVITE, 1)) == 1
    finally:
        srv.stop()
    srv = start_server("--record", "--redis", redis_server.url)
    try:
        (record,) = get_records(srv, INVITE)
        assert record["operationID"] == "before-restart"
    finally:
        srv.stop()


def test_the_queue_is_bounded_in_bytes_too() -> None:
    async def go() -> None:
        store = FakeStore()
        store.gate = asyncio.Event()  # the store hangs
        r = make_recorder({INVITE: RecordSettings(enabled=True)}, store)
        r.queue_bytes_limit = 1_000_000
        big = {"content": "x" * 100_000}
        for _ in range(50):  # 5 MB asked for; the count limit (10,000) is far away
            r.submit(CAT.get(INVITE), big, "", outcome(), 0.0)
        assert 9 <= r.queue.qsize() <= 10 and r.queued_bytes <= 1_000_000
        assert r.dropped == 50 - r.queue.qsize()
        task = asyncio.create_task(r.run())
        store.gate.set()
        await r.flush()
        while r.queued_bytes:  # run() took the first batch; wait for it to go through
            await asyncio.sleep(0.01)
        task.cancel()
        assert r.queued_bytes == 0 and len(store.records) == 50 - r.dropped

    asyncio.run(go())
