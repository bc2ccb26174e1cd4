"""The callback delegate (server/http/callback.py) in process: what the raw bytes of
tests/test_callback_bytes.py do not show. Callbacks never reach the Tornado application, the
admin paths always do; counters and recordings per callback; an exception while answering;
clients that leave mid-body or mid-dispatch; keep-alive and pipelining.

Every test runs an in-process server on a free port with its own state and a fake sandbox
pool, and sends it raw HTTP bytes (only ``Date`` is dropped from the responses).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import tornado.netutil

from sandbox.api import ALLOW, DENY, MODIFY, RunResult
from server.config import Config
from server.http.callback import CallbackExchange, CallbackServer
from server.http.conn import Server as HTTPServer
from server.serve import http_server
from server.service.state import build_state
from server.store.base import ActiveScript

CMD = "callbackBeforeInviteJoinGroupCommand"
ECHO = "callbackBeforeSetGroupInfoCommand"  # echoes groupID & co. into continue replies
NO_SCRIPT = "callbackBeforeAddFriendCommand"
GO_HEADERS = (
    b"Host: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Operationid: op-7\r\nAccept-Encoding: gzip\r\n"
)
MAX_BODY = 2000


class FakePool:
    """Answers by the live script's "source": allow, modify, deny; ``gate`` holds calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def run(self, *, source: str, payload_json: bytes, **_: Any) -> RunResult:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if source == "modify":
            return RunResult(MODIFY, {"invitedUserIDs": ["u1", "u2"]})
        if source == "deny":
            return RunResult(DENY, {"errCode": 5001, "errMsg": "invitation refused", "errDlt": "blocked: u2"})
        if source == "deny99":
            return RunResult(DENY, {"errCode": 99, "errMsg": "low", "errDlt": ""})
        if source == "narrow":
            return RunResult(MODIFY, {"invitedUserIDs": ["u1"]})
        return RunResult(ALLOW)

    async def close(self) -> None:
        pass


class StubStore:
    healthy = True

    async def close(self) -> None:
        pass


@dataclass
class Server:
    port: int
    state: Any
    pool: FakePool
    http: HTTPServer
    delegate: CallbackServer
    app_requests: int = 0  # requests the application saw


async def start(cfg: Config, source: str = "allow") -> Server:
    pool = FakePool()
    state = await build_state(cfg, "token", store=StubStore(), pool=pool)
    state.table._scripts = {
        CMD: ActiveScript(CMD, 1, "sha", source),
        ECHO: ActiveScript(ECHO, 1, "sha", "allow"),
    }
    state.table.loaded = True
    http = http_server(state)  # the server `scriptgate serve` runs (server/http/conn.py, h1.py)
    delegate = http.delegate
    app = delegate.app
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    http.add_sockets(sockets)
    server = Server(sockets[0].getsockname()[1], state, pool, http, delegate)
    original = app.start_request

    def counted(server_conn: Any, request_conn: Any) -> Any:
        server.app_requests += 1
        return original(server_conn, request_conn)

    app.start_request = counted  # type: ignore[method-assign]
    return server


async def stop(*servers: Server) -> None:
    for s in servers:
        s.http.stop()
        await s.http.close_all_connections()


def config(**kw: Any) -> Config:
    cfg = Config(max_body_bytes=MAX_BODY, **kw)
    if cfg.path_prefix:
        cfg.path_prefix = "/" + cfg.path_prefix.strip("/")
    return cfg


def run(cfg: Config, body: Callable[[Server], Awaitable[None]], source: str = "allow") -> None:
    async def main() -> None:
        server = await start(cfg, source)
        try:
            await body(server)
        finally:
            await stop(server)

    asyncio.run(main())


# -- raw HTTP ------------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response as raw bytes, with the Date header line removed."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    chunked = False
    for line in lines:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        if name.lower() == b"transfer-encoding" and value.strip() == b"chunked":
            chunked = True
    body = b""
    if chunked:  # not expected from these servers
        raise AssertionError("chunked response")
    if length:
        body = await reader.readexactly(length)
    kept = [line for line in lines if not line.lower().startswith(b"date:")]
    return b"\r\n".join(kept) + body


async def exchange(port: int, data: bytes, responses: int = 1) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return [await read_response(reader) for _ in range(responses)]
    finally:
        writer.close()
        await writer.wait_closed()


def post(path: str, body: bytes, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return (b"POST " + path.encode() + b" " + version + b"\r\n" + GO_HEADERS + extra
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def go_body(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


INVITE = go_body({"callbackCommand": CMD, "operationID": "op-7", "groupID": "g1", "reason": "hi",
                  "invitedUserIDs": ["u1", "u2"]})


def counter(server: Server, name: str, **labels: str) -> float:
    return server.state.metrics.registry.get_sample_value(name, labels) or 0.0


# -- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source, expect", [
    ("allow", b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'),
    ("modify", b'"invitedUserIDs":["u1","u2"]}'),
    ("deny", b'"errCode":5001,"errMsg":"invitation refused","errDlt":"blocked: u2","nextCode":1}'),
])
def test_answers_and_counters(source: str, expect: bytes) -> None:
    async def body(s: Server) -> None:
        [got] = await exchange(s.port, post(f"/callbackExample/{CMD}?x=1", INVITE))
        assert got.startswith(b"HTTP/1.1 200 OK\r\nServer: TornadoServer/")
        assert b"\r\nContent-Type: application/json\r\n" in got
        assert got.endswith(expect)
        assert s.app_requests == 0  # callbacks never reach the application
        assert s.pool.calls == 1
        verdict = {"allow": "allow", "modify": "modify", "deny": "deny"}[source]
        assert counter(s, "scriptgate_callbacks_total", command=CMD) == 1
        assert counter(s, "scriptgate_verdicts_total", command=CMD, verdict=verdict) == 1
        assert counter(s, "scriptgate_callback_duration_seconds_count", command=CMD) == 1

    run(config(), body, source)


def test_echo_and_no_script_and_protocol_variants() -> None:
    async def body(s: Server) -> None:
        echo = go_body({"callbackCommand": ECHO, "groupID": "g9", "groupName": "n", "introduction": "i"})
        [got] = await exchange(s.port, post(f"/{ECHO}", echo))
        assert b'"groupID":"g9"' in got
        [got] = await exchange(s.port, post(f"/cb/{NO_SCRIPT}", go_body({"fromUserID": "a"})))
        assert got.endswith(b'"nextCode":0}')
        [got] = await exchange(s.port, post(f"/{CMD}", INVITE, b"Connection: close\r\n"))
        assert b"\r\nConnection: close\r\n" in got
        cont, got = await exchange(s.port, post(f"/{CMD}", INVITE, b"Expect: 100-continue\r\n"), 2)
        assert cont.startswith(b"HTTP/1.1 100 ") and got.startswith(b"HTTP/1.1 200 ")
        [got] = await exchange(s.port, post(f"/{CMD}", INVITE, b"Connection: keep-alive\r\n", b"HTTP/1.0"))
        assert b"\r\nConnection: Keep-Alive\r\n" in got
        assert s.app_requests == 0
        assert s.pool.calls == 4

    run(config(), body)


def test_recording() -> None:
    async def body(s: Server) -> None:
        await exchange(s.port, post(f"/{CMD}", INVITE))
        assert s.state.recorder.queue.qsize() == 1
        _, record = s.state.recorder.queue.get_nowait()
        assert record["operationID"] == "op-7" and record["verdict"] == "modify"
        assert record["command"] == CMD

    run(config(record=True), body, "modify")


ERRORS = [
    ("invalid_json", post(f"/{CMD}", b'{"groupID": ')),
    ("invalid_json", post(f"/{CMD}", b"")),
    ("invalid_utf8", post(f"/{CMD}", b'{"groupID": "\xff\xfe"}')),
    ("invalid_body", post(f"/{CMD}", b"[1, 2]")),
    ("invalid_field", post(f"/{CMD}", b'{"invitedUserIDs": 5}')),
    ("unknown_command", post("/callbackNope", b"{}")),
    ("unknown_command", post("/", b"{}")),
    ("not_found", post("/admin/callbackBeforeInviteJoinGroupCommand", b"{}")),
    ("method_not_allowed", b"GET /" + CMD.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("payload_too_large", post(f"/{CMD}", b"{" + b" " * MAX_BODY + b"}")),
    ("payload_too_large", b"POST /" + CMD.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"%x\r\n" % (MAX_BODY + 10) + b"{" + b" " * (MAX_BODY + 8) + b"}\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("code, request_bytes", ERRORS, ids=[f"{i}-{e[0]}" for i, e in enumerate(ERRORS)])
def test_errors(code: str, request_bytes: bytes) -> None:
    async def body(s: Server) -> None:
        [got] = await exchange(s.port, request_bytes)
        admin = b"/admin/" in request_bytes.split(b"\r\n", 1)[0]
        if admin:  # the admin API's JSON error, from the application
            assert got.startswith(b"HTTP/1.1 404 ") and b'{"error":"' + code.encode() + b'"' in got
        else:
            assert got.startswith(b"HTTP/1.1 200 ") and b'"code":"' + code.encode() + b'"' in got
        assert s.pool.calls == 0
        assert s.app_requests == (1 if admin else 0)
        assert counter(s, "scriptgate_bad_requests_total", reason=code) == (0 if admin else 1)

    run(config(), body)


def test_admin_paths_go_to_the_application() -> None:
    async def body(s: Server) -> None:
        for path in ("/metrics", "/healthz", "/admin", "/admin/scripts", "/admin/nope/x"):
            got = await exchange(s.port, post(path, b"{}"))
            assert not got[0].startswith(b"HTTP/1.1 200 "), path
        assert s.app_requests == 5
        # ... and only they: a callback path that merely looks like one is a callback.
        for path in ("/healthz/", "/metricsX", "/administrator"):
            [got] = await exchange(s.port, post(path, b"{}"))
            assert got.startswith(b"HTTP/1.1 200 ") and b'"code":"unknown_command"' in got, path
        assert s.app_requests == 5

    run(config(), body)


def test_pipelined_keep_alive() -> None:
    async def body(s: Server) -> None:
        requests = [
            post(f"/{CMD}", INVITE),
            post(f"/{CMD}", b"not json"),
            post(f"/{ECHO}", go_body({"groupID": "g2"})),
            post(f"/{CMD}", INVITE, b"Expect: 100-continue\r\n"),
            post("/healthz", b""),
            post(f"/{CMD}", INVITE),
            # Answered before its (empty) body is read: the connection is closed after it.
            b"GET /" + CMD.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        got = await exchange(s.port, b"".join(requests), 8)
        assert [r.split(b" ", 2)[1] for r in got] == [b"200", b"200", b"200", b"100", b"200", b"405", b"200", b"200"]
        assert b"\r\nConnection: close\r\n" not in got[-2]
        assert s.app_requests == 1
        assert s.pool.calls == 4

    run(config(), body)


def test_answered_callbacks_leave_no_reference_cycles() -> None:
    # A cycle per callback is garbage only the cyclic GC frees: at ~1,000 callbacks/s its
    # collections stalled the HTTP process by 1-4 ms (docs/performance.md).
    async def body(s: Server) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        try:
            async def rounds(n: int) -> None:
                for _ in range(n):  # one waits for the (fake) sandbox, one has no script
                    writer.write(post(f"/{CMD}", INVITE) + post(f"/{NO_SCRIPT}", go_body({})))
                    await writer.drain()
                    assert b"actionCode" in await read_response(reader)
                    assert b"actionCode" in await read_response(reader)

            await rounds(20)  # warm: caches, metrics' children, lazily built objects
            gc.collect()
            await rounds(100)
            found = gc.collect()
        finally:
            writer.close()
            await writer.wait_closed()
        assert found < 20, f"{found} objects in reference cycles after 200 callbacks"

    gc.disable()
    try:
        run(config(), body)
    finally:
        gc.enable()


# -- failures ------------------------------------------------------------------------------


def test_dispatch_exception_is_a_five_field_200(caplog: pytest.LogCaptureFixture) -> None:
    async def boom(*_: Any) -> Any:
        raise RuntimeError("dispatch broke")

    async def body(s: Server) -> None:
        s.state.dispatcher.dispatch = boom
        [got] = await exchange(s.port, post(f"/{CMD}", INVITE))
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert got.endswith(b'"nextCode":0,"error":{"code":"internal_error","message":"internal error (see the server log)"}}')
        assert b"Traceback" not in got and b"dispatch broke" not in got
        assert counter(s, "scriptgate_bad_requests_total", reason="internal_error") == 1
        # The connection stays usable.
        got = await exchange(s.port, post(f"/{CMD}", INVITE) + post(f"/{CMD}", b"[]"), 2)
        assert b'"code":"invalid_body"' in got[1]

    with caplog.at_level(logging.ERROR):
        run(config(), body)
    logs = [r for r in caplog.records if r.name == "scriptgate.http" and "unhandled error" in r.getMessage()]
    assert logs and all(r.exc_info for r in logs)


def test_a_failure_to_record_costs_no_reply(caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("recorder broke")

    async def body(s: Server) -> None:
        s.state.recorder.submit = broken
        [got] = await exchange(s.port, post(f"/{CMD}", INVITE))
        assert got.endswith(b'"errDlt":"blocked: u2","nextCode":1}')

    with caplog.at_level(logging.ERROR):
        run(config(record=True), body, "deny")
    assert any("after the reply to" in r.getMessage() and r.exc_info for r in caplog.records)


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> asyncio.Event:
    event = asyncio.Event()
    original = getattr(CallbackExchange, name)

    def spied(self: CallbackExchange, *args: Any) -> Any:
        result = original(self, *args)
        event.set()
        return result

    monkeypatch.setattr(CallbackExchange, name, spied)
    return event


def test_client_leaves_mid_body(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def body(s: Server) -> None:
        closed = _spy(monkeypatch, "on_connection_close")
        _reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(post(f"/{CMD}", INVITE)[:-10])
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await closed.wait()
        assert s.pool.calls == 0 and s.app_requests == 0
        [got] = await exchange(s.port, post(f"/{CMD}", INVITE))
        assert got.startswith(b"HTTP/1.1 200 ")

    with caplog.at_level(logging.WARNING):
        run(config(), body)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_client_leaves_during_dispatch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def body(s: Server) -> None:
        gone = _spy(monkeypatch, "on_close")
        s.pool.gate = asyncio.Event()
        _reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(post(f"/{CMD}", INVITE))
        await writer.drain()
        await s.pool.entered.wait()
        writer.close()
        await writer.wait_closed()
        await gone.wait()
        s.pool.gate.set()
        await asyncio.gather(*s.delegate.tasks)
        # Counted: the callback ran, the reply was lost.
        assert counter(s, "scriptgate_callbacks_total", command=CMD) == 1
        s.pool.gate = None
        [got] = await exchange(s.port, post(f"/{CMD}", INVITE))
        assert got.startswith(b"HTTP/1.1 200 ")

    with caplog.at_level(logging.WARNING):
        run(config(), body)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_path_wins_when_path_and_body_disagree(caplog: pytest.LogCaptureFixture) -> None:
    async def body(s: Server) -> None:
        other = go_body({"callbackCommand": CMD, "groupID": "g9"})
        [got] = await exchange(s.port, post(f"/{ECHO}", other))
        assert b'"groupID":"g9"' in got  # answered as ECHO (setGroupInfo echoes groupID)
        assert counter(s, "scriptgate_command_source_total", source="mismatch") == 1
        assert counter(s, "scriptgate_callbacks_total", command=ECHO) == 1

    with caplog.at_level(logging.WARNING, "scriptgate.http"):
        run(config(), body)
    assert any(f"path names {ECHO} but the body's callbackCommand is '{CMD}'" in r.getMessage()
               for r in caplog.records)
