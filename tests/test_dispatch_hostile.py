"""What OpenIM receives when a sandbox worker lies, breaks the protocol or never answers.

The host re-checks every worker result (``server.service.callbacks.verdict_reply`` after
the shape checks of ``sandbox.host.results``): anything but a valid allow/modify/deny for the command
becomes the command's failure-policy reply, and a call with no answer is cut off at the
command's deadline with that same reply. These tests drive the production HTTP path
(``make_app`` behind ``CallbackServer``) with a real ``WorkerPool`` whose workers are
``tests/pool_fake_worker.py scripted``: each request tells the fake worker what to send back.

The policy is ``closed`` with its own errCode/errMsg/errDlt unless said otherwise, so a
policy reply cannot be mistaken for an allow. Replies are compared as exact JSON (types and
key order included); the diagnostic ``error`` object an invalid result may carry next to the
five common fields is checked for its ``kind`` only.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import tornado.httpclient
import tornado.netutil

from sandbox.api import BUDGET, DENY, ERROR, INVALID_RESULT, Budgets, RunResult
from sandbox.host.pool import WorkerPool
from server import reply
from server.config import CommandSettings, Config
from server.serve import http_server
from server.service.callbacks import MAX_REJECT_TEXT, REPLY_MARGIN_S, Outcome
from server.service.state import build_state
from server.store.base import ActiveScript
from server.store.connect import open_store
from tests.timing import FAR_S, SLACK_S

FAKE = str(Path(__file__).resolve().parent / "pool_fake_worker.py")
FRIEND = "callbackBeforeAddFriendCommand"  # may change no field
REMARK = "callbackBeforeSetFriendRemarkCommand"  # may change "remark" (a string)
CLOSED = CommandSettings(failure_policy="closed", reject_errcode=5100, reject_errmsg="refused by policy",
                         reject_errdlt="policy detail", deadline_ms=10_000, budgets=Budgets(wall_ms=5_000))
OPEN = CommandSettings(failure_policy="open", deadline_ms=10_000, budgets=Budgets(wall_ms=5_000))
POLICY_CLOSED = {"actionCode": 0, "errCode": 5100, "errMsg": "refused by policy", "errDlt": "policy detail",
                 "nextCode": 1}
ACK = {"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0}


def result(verdict: Any, fields: Any = None, error: Any = None, **extra: Any) -> dict[str, Any]:
    return {"hostile": {"r": {"verdict": verdict, "fields": {} if fields is None else fields, "error": error,
                              "logs": [], **extra}}}


@dataclass
class Served:
    base: str
    state: Any
    outcomes: list[Outcome]
    client: tornado.httpclient.AsyncHTTPClient

    async def callback(self, command: str, payload: dict[str, Any]) -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await self.client.fetch(f"{self.base}/{command}", method="POST", body=orjson.dumps(payload),
                                    raise_error=False, request_timeout=60)
        assert r.code == 200, (r.code, r.body)
        return r.body, loop.time() - started


def serve(test: Callable[[Served], Awaitable[None]], settings: CommandSettings, pool: Any = None) -> None:
    async def main() -> None:
        store = await open_store(None, prefix="hostile", isolated=True)
        own_pool = pool is None
        the_pool = pool or WorkerPool(size=2, start_timeout=30, worker_cmd=[sys.executable, FAKE, "scripted"])
        if own_pool:
            await the_pool.start()
        state = await build_state(Config(defaults=settings), "token", store=store, pool=the_pool)
        state.table._scripts = {c: ActiveScript(c, 1, "sha", "def handle(req):\n    return None\n")
                                for c in (FRIEND, REMARK)}
        state.table.loaded = True
        outcomes: list[Outcome] = []
        dispatch = state.dispatcher.dispatch

        async def spy(*args: Any, **kw: Any) -> Outcome:
            outcome = await dispatch(*args, **kw)
            outcomes.append(outcome)
            return outcome

        state.dispatcher.dispatch = spy  # type: ignore[method-assign]
        http = http_server(state)  # the server `scriptgate serve` runs
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        http.add_sockets(sockets)
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        try:
            await test(Served(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", state, outcomes, client))
        finally:
            client.close()
            http.stop()
            await http.close_all_connections()
            await the_pool.close()
            await store.close()

    asyncio.run(main())


async def idle_worker(pool: WorkerPool) -> None:
    """Replacements are spawned in the background with no event to await: poll the pool."""
    async with asyncio.timeout(FAR_S):
        while pool.stats()["idle"] < 1:
            await asyncio.sleep(0.01)


def assert_reply(raw: bytes, expected: dict[str, Any], error_kind: str | None = None) -> None:
    """``raw`` is exactly ``expected`` (same keys, order, JSON types) apart from the
    diagnostic ``error`` object, which may only accompany an error of ``error_kind``."""
    body = orjson.loads(raw)
    diagnostic = body.pop("error", None)
    assert orjson.dumps(body) == orjson.dumps(expected), raw
    if diagnostic is not None:
        assert error_kind is not None and diagnostic.get("kind") == error_kind, raw
    if diagnostic is None and error_kind is None:
        assert raw == reply.encode(expected)


def deny_reply(msg: str, dlt: str) -> dict[str, Any]:
    return {"actionCode": 0, "errCode": 5001, "errMsg": msg, "errDlt": dlt, "nextCode": 1}


# Each case: (command, what the worker sends, the reply OpenIM must get, the error kind).
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any], str | None]] = {
    # Baselines: what a valid result turns into (so the refusals below are refusals).
    "allow": (FRIEND, result("allow"), ACK, None),
    "deny": (FRIEND, result("deny", {"errCode": 5001, "errMsg": "m", "errDlt": "d"}),
             {"actionCode": 0, "errCode": 5001, "errMsg": "m", "errDlt": "d", "nextCode": 1}, None),
    "deny-text-at-the-cap": (
        FRIEND, result("deny", {"errCode": 5001, "errMsg": "m" * MAX_REJECT_TEXT, "errDlt": "d" * MAX_REJECT_TEXT}),
        {"actionCode": 0, "errCode": 5001, "errMsg": "m" * MAX_REJECT_TEXT, "errDlt": "d" * MAX_REJECT_TEXT,
         "nextCode": 1}, None),
    "modify": (REMARK, result("modify", {"remark": "new"}), {**ACK, "remark": "new"}, None),
    # A deny's extra fields must not reach the reply: nextCode 0 would turn it into a continue.
    "deny-smuggling-common-fields": (
        FRIEND, result("deny", {"errCode": 5001, "errMsg": "m", "errDlt": "", "nextCode": 0, "actionCode": 1}),
        {"actionCode": 0, "errCode": 5001, "errMsg": "m", "errDlt": "", "nextCode": 1}, None),
    # Unknown or inconsistent verdicts (refused by the pool's shape check).
    "verdict-unknown": (FRIEND, result("block"), POLICY_CLOSED, INVALID_RESULT),
    "verdict-empty": (FRIEND, result(""), POLICY_CLOSED, INVALID_RESULT),
    "verdict-null": (FRIEND, result(None), POLICY_CLOSED, INVALID_RESULT),
    "verdict-number": (FRIEND, result(1), POLICY_CLOSED, INVALID_RESULT),
    "verdict-uppercase": (FRIEND, result("ALLOW"), POLICY_CLOSED, INVALID_RESULT),
    "error-without-error": (FRIEND, result("error"), POLICY_CLOSED, INVALID_RESULT),
    "allow-with-error": (FRIEND, result("allow", error={"kind": "runtime", "message": "x"}), POLICY_CLOSED,
                         INVALID_RESULT),
    "error-of-unknown-kind": (FRIEND, result("error", error={"kind": "nope", "message": "x"}), POLICY_CLOSED,
                              INVALID_RESULT),
    "fields-not-an-object": (FRIEND, result("deny", [5001, "m"]), POLICY_CLOSED, INVALID_RESULT),
    "result-not-an-object": (FRIEND, {"hostile": {"r": ["allow"]}}, POLICY_CLOSED, INVALID_RESULT),
    "logs-not-strings": (FRIEND, result("allow", logs=[1]), POLICY_CLOSED, INVALID_RESULT),
    # deny() texts over the cap or of the wrong type (refused by the dispatcher's re-check).
    # A deny stays a deny (issue 13, M2): text over the cap is cut, text that is not a string is sent as "".
    "errmsg-over-the-cap": (FRIEND, result("deny", {"errCode": 5001, "errMsg": "m" * (MAX_REJECT_TEXT + 1)}),
                            deny_reply("m" * MAX_REJECT_TEXT, ""), None),
    "errdlt-over-the-cap": (FRIEND, result("deny", {"errCode": 5001, "errDlt": "d" * (MAX_REJECT_TEXT + 1)}),
                            deny_reply("", "d" * MAX_REJECT_TEXT), None),
    "errmsg-number": (FRIEND, result("deny", {"errCode": 5001, "errMsg": 7}), deny_reply("", ""), None),
    "errmsg-null": (FRIEND, result("deny", {"errCode": 5001, "errMsg": None}), deny_reply("", ""), None),
    "errmsg-list": (FRIEND, result("deny", {"errCode": 5001, "errMsg": ["m"]}), deny_reply("", ""), None),
    "errdlt-object": (FRIEND, result("deny", {"errCode": 5001, "errDlt": {"a": 1}}), deny_reply("", ""), None),
    "modify-on-a-command-that-changes-nothing": (FRIEND, result("modify", {"reqMsg": "x"}), POLICY_CLOSED,
                                                 INVALID_RESULT),
    "modify-unknown-field": (REMARK, result("modify", {"remark": "ok", "ownerUserID": "x"}), POLICY_CLOSED,
                             INVALID_RESULT),
    "modify-nextcode": (REMARK, result("modify", {"nextCode": 0}), POLICY_CLOSED, INVALID_RESULT),
    "modify-errcode": (REMARK, result("modify", {"errCode": 0, "errMsg": ""}), POLICY_CLOSED, INVALID_RESULT),
    "modify-actioncode": (REMARK, result("modify", {"actionCode": 1}), POLICY_CLOSED, INVALID_RESULT),
    "modify-wrong-type-int": (REMARK, result("modify", {"remark": 5}), POLICY_CLOSED, INVALID_RESULT),
    "modify-wrong-type-list": (REMARK, result("modify", {"remark": ["a"]}), POLICY_CLOSED, INVALID_RESULT),
    "modify-wrong-type-bool": (REMARK, result("modify", {"remark": True}), POLICY_CLOSED, INVALID_RESULT),
    # Frames that are not protocol at all, and a worker that dies mid-call.
    "garbage-frame": (FRIEND, {"hostile": "garbage"}, POLICY_CLOSED, INVALID_RESULT),
    "exit-mid-call": (FRIEND, {"hostile": "exit"}, POLICY_CLOSED, BUDGET),
}


def test_hostile_worker_results_become_the_failure_policy_reply() -> None:
    """One pool plays every hostile worker in turn (killed and replaced after each lie)."""

    async def scenario(srv: Served) -> None:
        failures = []
        for name, (command, order, expected, kind) in CASES.items():
            # Each lie costs a worker; start every call with one ready so that a slow respawn
            # on a loaded machine cannot turn the case into a deadline (budget) case.
            await idle_worker(srv.state.pool)
            payload = {"fromUserID": "a", "toUserID": "b", "remark": "r", **order}
            raw, _ = await srv.callback(command, payload)
            outcome = srv.outcomes[-1]
            try:
                assert_reply(raw, expected, kind)
                if kind is None:
                    assert outcome.error is None, outcome.error
                else:
                    assert outcome.verdict == ERROR and outcome.error is not None, outcome
                    assert outcome.error.kind == kind, outcome.error
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")
        assert not failures, "\n".join(failures)
        # Protocol breakers were killed and replaced, and the pool still answers truthfully.
        assert srv.state.pool.stats()["killed"] >= 10
        command, order, expected, _ = CASES["deny"]
        raw, _ = await srv.callback(command, {"fromUserID": "a", **order})
        assert_reply(raw, expected)

    serve(scenario, CLOSED)


def test_hostile_results_under_the_open_policy_continue_unchanged() -> None:
    async def scenario(srv: Served) -> None:
        for order in (result("block"), {"hostile": "garbage"}):
            raw, _ = await srv.callback(REMARK, {"remark": "r", **order})
            assert_reply(raw, ACK, INVALID_RESULT)
        raw, _ = await srv.callback(REMARK, {"remark": "r", **result("modify", {"remark": 5})})
        assert_reply(raw, ACK, INVALID_RESULT)
        assert "remark" not in orjson.loads(raw)

    serve(scenario, OPEN)


@pytest.mark.parametrize("policy, expected", [("open", ACK), ("closed", POLICY_CLOSED)])
def test_a_worker_that_never_answers_gets_the_policy_reply_at_the_deadline(policy: str, expected: dict) -> None:
    settings = CLOSED if policy == "closed" else OPEN
    settings = CommandSettings(**{**settings.__dict__, "deadline_ms": 400, "budgets": Budgets(wall_ms=300)})

    async def scenario(srv: Served) -> None:
        raw, took = await srv.callback(FRIEND, {"fromUserID": "a", "hostile": "silent"})
        assert_reply(raw, expected, BUDGET)
        outcome = srv.outcomes[-1]
        assert outcome.error is not None and outcome.error.kind == BUDGET, outcome.error
        # Cut off at the deadline (the exact instant is the pool's, see test_pool_hostile.py;
        # the upper bound only leaves room for a loaded machine's scheduling).
        assert 250 <= outcome.elapsed_ms < 400 + 1000 * SLACK_S, outcome.elapsed_ms
        assert took < FAR_S, took

    serve(scenario, settings)


class StuckPool:
    """A pool whose call never returns: only the dispatcher's own deadline can answer."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.budget_s: float | None = None  # the time the dispatcher allowed the call

    async def run(self, *, deadline: float, **_: Any) -> RunResult:
        self.budget_s = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")

    def stats(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("policy, expected", [("open", ACK), ("closed", POLICY_CLOSED)])
def test_dispatch_deadline_fallback_when_the_pool_itself_hangs(policy: str, expected: dict) -> None:
    base = CLOSED if policy == "closed" else OPEN
    settings = CommandSettings(**{**base.__dict__, "deadline_ms": 200, "budgets": Budgets(wall_ms=100)})

    async def scenario(srv: Served) -> None:
        pool = srv.state.pool
        raw, took = await srv.callback(FRIEND, {"fromUserID": "a"})
        assert_reply(raw, expected, BUDGET)
        outcome = srv.outcomes[-1]
        assert outcome.error is not None and outcome.error.kind == BUDGET
        assert outcome.error.message == "deadline exceeded: no reply within 200 ms"
        # The pool was told to finish before the deadline, keeping time to write the reply...
        assert pool.budget_s is not None and 0 < pool.budget_s <= 0.2 - REPLY_MARGIN_S
        # ...and the dispatcher waited that long, not longer than scheduling explains.
        assert 200 - 1000 * REPLY_MARGIN_S <= outcome.elapsed_ms < 200 + 1000 * SLACK_S, outcome.elapsed_ms
        await asyncio.wait_for(pool.cancelled.wait(), FAR_S)  # the stuck call was abandoned, not leaked
        assert took < FAR_S, took

    serve(scenario, settings, pool=StuckPool())


class ForgingPool:
    """Results that the real pool's shape check would refuse, handed straight to the
    dispatcher: its own re-check must hold even if the pool's were weakened."""

    def __init__(self) -> None:
        self.next: RunResult = RunResult("allow")

    async def run(self, **_: Any) -> RunResult:
        return self.next

    def stats(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "forged, expected",
    [
        (RunResult(DENY, {"errMsg": "m" * (MAX_REJECT_TEXT + 1), "errCode": 5001}), deny_reply("m" * MAX_REJECT_TEXT, "")),
        (RunResult(DENY, {"errCode": 5001, "errDlt": 1}), deny_reply("", "")),
        (RunResult(DENY, {"errCode": 99, "errMsg": "m"}),
         {"actionCode": 0, "errCode": 5000, "errMsg": "m", "errDlt": "", "nextCode": 1}),
    ],
    ids=["errmsg-over-cap", "errdlt-number", "errcode-out-of-range"],
)
def test_dispatcher_keeps_a_forged_deny_a_valid_deny(forged: RunResult, expected: dict[str, Any]) -> None:
    """A deny the pool let through with bad text or code still goes out as a rejection
    OpenIM accepts: a deny is always a deny (issue 13, M2)."""
    pool = ForgingPool()
    pool.next = forged

    async def scenario(srv: Served) -> None:
        raw, _ = await srv.callback(REMARK, {"remark": "r"})
        assert_reply(raw, expected)

    serve(scenario, CLOSED, pool=pool)


@pytest.mark.parametrize(
    "forged",
    [
        RunResult("block"),
        RunResult(""),
        RunResult(ERROR),  # an error verdict without an error
        RunResult("modify", {"remark": 1}),
        RunResult("modify", {"nextCode": 0}),
    ],
    ids=["unknown", "empty", "error-without-error", "modify-wrong-type",
         "modify-nextcode"],
)
def test_dispatcher_rechecks_results_the_pool_let_through(forged: RunResult) -> None:
    pool = ForgingPool()
    pool.next = forged

    async def scenario(srv: Served) -> None:
        raw, _ = await srv.callback(REMARK, {"remark": "r"})
        assert_reply(raw, POLICY_CLOSED, INVALID_RESULT)
        outcome = srv.outcomes[-1]
        assert outcome.verdict == ERROR and outcome.error is not None and outcome.error.kind == INVALID_RESULT

    serve(scenario, CLOSED, pool=pool)
