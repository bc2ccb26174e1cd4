"""Early acknowledgement of after-callbacks (issue #17; server/service/after.py).

In-process (a gated fake pool, so "still running" is a fact, not a timing guess): the early
ack is the synchronous continue byte for byte, the bound answers the (N+1)th call after its
script and counts it, 0 restores the synchronous path, before-commands never ack early, a
failing background run is logged and harms nothing. Against real ``scriptgate serve``
processes and real Redis: the script's writes land after the ack, recordings and
per-callback logs carry the real outcome and say ``early_ack``, the bound with a slow
script, and a SIGTERM with pending background runs lets every one of them finish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from sandbox.api import ALLOW, RunResult
from server.config import Config, ConfigError, build
from server.service.state import build_state
from server.store.base import ActiveScript
from tests.gojson import go_encode, go_headers
from tests.server_proc import ServerProc, start_server
from tests.test_http_callback import MAX_BODY, StubStore, exchange, go_body, post
from tests.timing import FAR_S

AFTER = "callbackAfterSendSingleMsgCommand"
BEFORE = "callbackBeforeInviteJoinGroupCommand"
GOLDEN = Path(__file__).parent / "golden" / "callback_replies.json"
ACK_BODY = b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'


def golden_ack() -> bytes:
    """The pinned synchronous reply to an after-callback (tests/test_callback_bytes.py), Date line removed."""
    golden = json.loads(GOLDEN.read_text())
    for case in ("after-allow", "after-boom"):  # a script that returns and one that raises: same bytes
        assert golden["cases"][case]["responses"] == golden["cases"]["after-allow"]["responses"]
    return golden["cases"]["after-allow"]["responses"][0].encode("latin-1").replace(b"Date: -\r\n", b"")


# -- in-process, with a gated pool -----------------------------------------------------------


class GatedPool:
    """Holds every call until ``gate`` is set; counts calls started and finished."""

    def __init__(self, max_queue: int = 256) -> None:
        self.max_queue = max_queue  # per command, as sandbox/host/pool.py
        self.gate = asyncio.Event()
        self.started = 0
        self.finished = 0

    async def run(self, **_: Any) -> RunResult:
        self.started += 1
        await self.gate.wait()
        self.finished += 1
        return RunResult(ALLOW)

    async def close(self) -> None:
        pass


async def serve(limit: int, max_queue: int = 256) -> tuple[Any, GatedPool, Any, int]:
    import tornado.netutil

    from server.serve import http_server

    pool = GatedPool(max_queue)
    state = await build_state(Config(max_body_bytes=MAX_BODY, after_ack_max_pending=limit), "token",
                              store=StubStore(), pool=pool)
    state.table._scripts = {name: ActiveScript(name, 1, "sha", "allow") for name in (AFTER, BEFORE)}
    state.table.loaded = True
    http = http_server(state)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    http.add_sockets(sockets)
    return state, pool, http, sockets[0].getsockname()[1]


def after_request(op: str = "op-7") -> bytes:
    return post(f"/{AFTER}", go_body({"callbackCommand": AFTER, "operationID": op, "sendID": "a", "recvID": "b"}))


def before_request() -> bytes:
    return post(f"/{BEFORE}", go_body({"callbackCommand": BEFORE, "operationID": "op-7", "groupID": "g1",
                                       "invitedUserIDs": ["u1"]}))


def sample(state: Any, name: str, **labels: str) -> float:
    return state.metrics.registry.get_sample_value(name, labels) or 0.0


async def until(check: Any, what: str, timeout: float = FAR_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def in_process(limit: int, body: Any, max_queue: int = 256) -> None:
    async def main() -> None:
        state, pool, http, port = await serve(limit, max_queue)
        try:
            await body(state, pool, port)
        finally:
            pool.gate.set()
            http.stop()
            await http.close_all_connections()

    asyncio.run(main())


def test_the_early_ack_is_the_synchronous_continue_byte_for_byte() -> None:
    async def body(state: Any, pool: GatedPool, port: int) -> None:
        # The script is held: the answer can only be the early ack.
        got = await asyncio.wait_for(exchange(port, after_request()), FAR_S)
        assert got == [golden_ack()] and got[0].endswith(b"\r\n\r\n" + ACK_BODY)
        assert pool.finished == 0 and state.dispatcher.after.pending == 1
        assert sample(state, "scriptgate_after_early_acks_total", command=AFTER) == 1
        # Verdict metrics wait for the outcome the script really produces.
        assert sample(state, "scriptgate_callbacks_total", command=AFTER) == 0
        pool.gate.set()
        await until(lambda: state.dispatcher.after.pending == 0, "the background run")
        assert pool.finished == 1
        assert sample(state, "scriptgate_verdicts_total", command=AFTER, verdict="allow") == 1
        assert sample(state, "scriptgate_callbacks_total", command=AFTER) == 1

    in_process(256, body)
    sync: list[bytes] = []

    async def disabled(state: Any, pool: GatedPool, port: int) -> None:
        pool.gate.set()
        sync.extend(await exchange(port, after_request()))

    in_process(0, disabled)
    assert sync == [golden_ack()]


def test_the_bound_answers_the_next_call_after_its_script_and_counts_it() -> None:
    async def body(state: Any, pool: GatedPool, port: int) -> None:
        for i in range(2):
            assert await asyncio.wait_for(exchange(port, after_request(f"op-{i}")), FAR_S) == [golden_ack()]
        assert state.dispatcher.after.pending == 2
        third = asyncio.ensure_future(exchange(port, after_request("op-3")))
        await until(lambda: pool.started == 3, "the third call's script to start")
        assert not third.done()  # answered the old way: after its script, which is held
        assert sample(state, "scriptgate_after_inline_full_total", command=AFTER) == 1
        assert state.dispatcher.after.inline == 1
        pool.gate.set()
        assert await asyncio.wait_for(third, FAR_S) == [golden_ack()]
        await until(lambda: state.dispatcher.after.pending == 0, "the background runs")
        assert sample(state, "scriptgate_after_early_acks_total", command=AFTER) == 2
        assert sample(state, "scriptgate_verdicts_total", command=AFTER, verdict="allow") == 3
        # With room again, the next one is acknowledged early.
        pool.gate.clear()
        assert await asyncio.wait_for(exchange(port, after_request("op-4")), FAR_S) == [golden_ack()]
        assert sample(state, "scriptgate_after_early_acks_total", command=AFTER) == 3

    in_process(2, body)


def test_background_runs_take_at_most_half_of_a_commands_pool_queue() -> None:
    # A full queue would refuse ("sandbox overloaded") a script already acknowledged.
    async def body(state: Any, pool: GatedPool, port: int) -> None:
        for i in range(2):
            assert await asyncio.wait_for(exchange(port, after_request(f"op-{i}")), FAR_S) == [golden_ack()]
        third = asyncio.ensure_future(exchange(port, after_request("op-3")))
        await until(lambda: pool.started == 3, "the third call's script to start")
        assert not third.done() and state.dispatcher.after.pending == 2
        assert sample(state, "scriptgate_after_inline_full_total", command=AFTER) == 1
        pool.gate.set()
        assert await asyncio.wait_for(third, FAR_S) == [golden_ack()]
        await until(lambda: state.dispatcher.after.by_command[AFTER] == 0, "the background runs")

    in_process(256, body, max_queue=4)


def test_zero_disables_early_acks() -> None:
    async def body(state: Any, pool: GatedPool, port: int) -> None:
        call = asyncio.ensure_future(exchange(port, after_request()))
        await until(lambda: pool.started == 1, "the script to start")
        assert not call.done()
        pool.gate.set()
        assert await asyncio.wait_for(call, FAR_S) == [golden_ack()]
        assert sample(state, "scriptgate_after_early_acks_total", command=AFTER) == 0
        assert sample(state, "scriptgate_after_inline_full_total", command=AFTER) == 0
        assert state.dispatcher.after.describe()["early_acked"] == 0

    in_process(0, body)


def test_before_commands_and_after_commands_without_a_script_are_answered_as_before() -> None:
    async def body(state: Any, pool: GatedPool, port: int) -> None:
        call = asyncio.ensure_future(exchange(port, before_request()))
        await until(lambda: pool.started == 1, "the before script to start")
        assert not call.done()
        pool.gate.set()
        assert (await asyncio.wait_for(call, FAR_S))[0].endswith(ACK_BODY)
        del state.table._scripts[AFTER]  # no live script: nothing to run, the plain ack as always
        assert await exchange(port, after_request()) == [golden_ack()]
        assert sample(state, "scriptgate_verdicts_total", command=AFTER, verdict="none") == 1
        assert sample(state, "scriptgate_after_early_acks_total", command=AFTER) == 0

    in_process(256, body)


def test_a_failing_background_run_is_logged_and_harms_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def body(state: Any, pool: GatedPool, port: int) -> None:
        dispatch = state.dispatcher.dispatch

        async def broken(command: Any, *args: Any, **kw: Any) -> Any:
            if command.name == AFTER:
                raise RuntimeError("broken on purpose")
            return await dispatch(command, *args, **kw)

        state.dispatcher.dispatch = broken
        pool.gate.set()
        with caplog.at_level(logging.ERROR, logger="scriptgate.dispatch"):
            assert await exchange(port, after_request("op-x")) == [golden_ack()]
            await until(lambda: state.dispatcher.after.failed == 1, "the failure to be counted")
        assert "background run failed" in caplog.text and "operationID=op-7" in caplog.text  # the header's
        assert (await exchange(port, before_request()))[0].endswith(ACK_BODY)
        state.metrics.refresh(state)
        assert sample(state, "scriptgate_after_failed_total") == 1
        assert state.dispatcher.after.pending == 0

    in_process(256, body)


def test_runs_still_pending_after_the_drain_grace_are_cut_counted_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    from server.serve import drain

    class Listener:
        def refuse_new_handshakes(self) -> None:
            pass

        def stop_accepting(self) -> None:
            pass

        def unfinished(self, first_request_wait_s: float) -> int:
            return 0

        async def close_all_connections(self) -> None:
            pass

    async def body(state: Any, pool: GatedPool, port: int) -> None:
        for i in range(3):
            assert await exchange(port, after_request(f"op-{i}")) == [golden_ack()]
        with caplog.at_level(logging.ERROR, logger="scriptgate.serve"):
            await drain(state, Listener(), 0.05)  # the scripts are held: none can finish
        assert state.dispatcher.after.unfinished == 3 and state.dispatcher.after.pending == 0
        assert "3 early-acknowledged after-callback script(s) not finished" in caplog.text
        assert sample(state, "scriptgate_after_unfinished_total") == 3
        assert state.dispatcher.acks_early(state.catalog.get(AFTER)) is None  # draining: answered after the script

    in_process(256, body)


def test_the_option_is_validated() -> None:
    assert Config().after_ack_max_pending == 64
    assert build({"after_ack_max_pending": 0}).after_ack_max_pending == 0
    for bad in (-1, 1.5, "8", True, 10**6):
        with pytest.raises(ConfigError, match="after_ack_max_pending"):
            build({"after_ack_max_pending": bad})


# -- real servers, real Redis ------------------------------------------------------------------


def prefix() -> str:
    return "aa" + uuid.uuid4().hex[:8]


def wait_for(check: Any, what: str, timeout: float = FAR_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def counting_src(counter: str, spin: int = 0) -> str:
    """Counts each call in the KV store (after ``spin`` thousand loop steps) and logs the count;
    raises when the message content is 'boom'."""
    return (f"def handle(req):\n    n = 0\n    for i in range({spin}):\n        for j in range(1000):\n"
            f"            n += 1\n    c = kv.incr({counter!r}, 1, ttl=600)\n    log('count ' + str(c))\n"
            "    if req.get('content') == 'boom':\n        raise ValueError('boom')\n")


def metric(srv: ServerProc, name: str) -> float:
    total = 0.0
    for line in srv.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def after_call(srv: ServerProc, op: str, content: str = "hi") -> bytes:
    body = go_encode({"callbackCommand": AFTER, "operationID": op, "sendID": "a", "recvID": "b", "content": content})
    r = srv.callback(AFTER, None, raw=body, headers=go_headers(op))
    assert r.status == 200
    return r.body


def test_the_script_runs_after_the_ack_and_its_outcome_is_recorded(redis_standalone, tmp_path: Path) -> None:
    pfx, counter = prefix(), "n-" + uuid.uuid4().hex[:6]
    srv = start_server("--redis", redis_standalone.url, "--prefix", pfx, "--record")
    kv = redis_standalone.client()
    key = f"{pfx}:kv:default:{counter}"
    try:
        assert srv.upload(AFTER, counting_src(counter)).status == 201
        for i in range(20):
            assert after_call(srv, f"ok-{i}") == ACK_BODY
        assert after_call(srv, "bad-1", content="boom") == ACK_BODY
        wait_for(lambda: int(kv.get(key) or 0) == 21, "21 increments")
        assert metric(srv, "scriptgate_after_early_acks_total") == 21
        wait_for(lambda: len(kv.xrange(f"{pfx}:rec:{AFTER}")) == 21, "21 recordings")
        wait_for(lambda: len(kv.xrange(f"{pfx}:log:{AFTER}")) == 21, "21 per-callback logs")
        recs = {r["operationID"]: r for r in (orjson.loads(d["d"]) for _, d in kv.xrange(f"{pfx}:rec:{AFTER}"))}
        assert recs["ok-0"]["verdict"] == "allow" and recs["ok-0"]["early_ack"] is True
        assert recs["bad-1"]["verdict"] == "error" and recs["bad-1"]["error_kind"] == "exception"
        assert recs["bad-1"]["early_ack"] is True and recs["bad-1"]["reply"]["errCode"] == 0
        logs = [orjson.loads(next(iter(d.values()))) for _, d in kv.xrange(f"{pfx}:log:{AFTER}")]
        bad = next(rec for rec in logs if rec["operationID"] == "bad-1")
        assert bad["early_ack"] is True and bad["level"] == "error" and "boom" in bad["error"]
        assert bad["logs"] and bad["logs"][0].startswith("count ")
        assert metric(srv, f'scriptgate_script_errors_total{{command="{AFTER}",kind="exception"}}') == 1
        health = srv.request("GET", "/healthz").json()["after_acks"]
        assert health["early_acked"] == 21 and health["max_pending"] == 64
    finally:
        srv.stop()


def test_a_slow_script_fills_the_bound_and_the_next_call_waits_for_its_script(redis_standalone,
                                                                              tmp_path: Path) -> None:
    cfg = tmp_path / "sg.toml"
    cfg.write_text("after_ack_max_pending = 2\n[defaults]\ndeadline_ms = 14000\n"
                   "[defaults.budgets]\nwall_ms = 13000\nsteps = 100000000\n")
    pfx, counter = prefix(), "n-" + uuid.uuid4().hex[:6]
    srv = start_server("--redis", redis_standalone.url, "--prefix", pfx, "--config", str(cfg),
                       "--sandbox-workers", "1")
    kv = redis_standalone.client()
    key = f"{pfx}:kv:default:{counter}"
    try:
        assert srv.upload(AFTER, counting_src(counter, spin=3000)).status == 201
        assert after_call(srv, "s-1") == ACK_BODY and after_call(srv, "s-2") == ACK_BODY
        assert int(kv.get(key) or 0) < 2  # acknowledged before both scripts ran (one worker)
        assert after_call(srv, "s-3") == ACK_BODY  # the bound is reached: answered after its script
        assert int(kv.get(key) or 0) == 3  # its own increment (and the two before it) landed first
        assert metric(srv, "scriptgate_after_inline_full_total") == 1
        assert metric(srv, "scriptgate_after_early_acks_total") == 2
        wait_for(lambda: metric(srv, "scriptgate_after_pending") == 0, "no pending run")
    finally:
        srv.stop()


def test_under_a_flood_every_acknowledged_script_runs(redis_standalone, tmp_path: Path) -> None:
    # 16 clients without pause (more than OpenIM's queues send): the bound is reached again
    # and again, and still no script is refused, cut by its deadline or lost.
    import threading

    pfx, counter = prefix(), "n-" + uuid.uuid4().hex[:6]
    srv = start_server("--redis", redis_standalone.url, "--prefix", pfx, "--sandbox-workers", "1")
    kv = redis_standalone.client()
    key = f"{pfx}:kv:default:{counter}"
    sent: list[bytes] = []
    try:
        assert srv.upload(AFTER, counting_src(counter, spin=20)).status == 201

        def client(n: int) -> None:
            for i in range(40):
                sent.append(after_call(srv, f"f-{n}-{i}"))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(FAR_S)
        assert sent == [ACK_BODY] * 640
        wait_for(lambda: int(kv.get(key) or 0) == 640, "640 increments")
        wait_for(lambda: metric(srv, "scriptgate_after_pending") == 0, "no pending run")
        assert metric(srv, "scriptgate_script_errors_total") == 0
        assert metric(srv, f'scriptgate_verdicts_total{{command="{AFTER}",verdict="allow"}}') == 640
        acked = metric(srv, "scriptgate_after_early_acks_total")
        inline = metric(srv, "scriptgate_after_inline_full_total")
        assert acked + inline == 640 and acked > 0
    finally:
        srv.stop()


def test_sigterm_lets_every_pending_after_run_finish(redis_standalone, tmp_path: Path) -> None:
    cfg = tmp_path / "sg.toml"
    cfg.write_text("drain_grace_s = 60\n[defaults]\ndeadline_ms = 14000\n"
                   "[defaults.budgets]\nwall_ms = 13000\nsteps = 100000000\n")
    pfx, counter = prefix(), "n-" + uuid.uuid4().hex[:6]
    srv = start_server("--redis", redis_standalone.url, "--prefix", pfx, "--config", str(cfg),
                       "--sandbox-workers", "2", "--record")
    kv = redis_standalone.client()
    key = f"{pfx}:kv:default:{counter}"
    try:
        assert srv.upload(AFTER, counting_src(counter, spin=1500)).status == 201
        for i in range(8):
            assert after_call(srv, f"t-{i}") == ACK_BODY
        assert int(kv.get(key) or 0) < 8  # some are still pending when the stop begins
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(FAR_S) == 0
        assert int(kv.get(key) or 0) == 8
        srv.wait_line(r"stopping \(pid \d+\): drained in")
        assert "cut" not in srv.output[srv.index(r"stopping \(pid")]
        recs = [orjson.loads(d["d"]) for _, d in kv.xrange(f"{pfx}:rec:{AFTER}")]
        assert sorted(r["operationID"] for r in recs) == [f"t-{i}" for i in range(8)]
    finally:
        srv.stop()
