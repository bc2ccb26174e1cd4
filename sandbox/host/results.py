"""What a worker reports about a call, checked before the host believes it.

Workers are untrusted: ``parse_done`` rebuilds a ``RunResult`` from a ``done`` message
accepting only the exact shape, ``parse_issues`` the issues of a ``checked`` message, and
``describe_exit`` names the budget a worker that died by itself most likely ran out of.
A message that breaks the rules raises ``Violation`` (the worker is then killed).
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from sandbox import protocol
from sandbox.api import (
    ALLOW,
    DENY,
    ERROR,
    ERROR_KINDS,
    EXCEPTION,
    INVALID_RESULT,
    MODIFY,
    UNAVAILABLE,
    CompileIssue,
    RunResult,
    ScriptError,
    bounded,
)

if TYPE_CHECKING:
    from sandbox.host.workerhandle import Worker

VERDICTS = (ALLOW, MODIFY, DENY, ERROR)
MAX_ISSUES = 100
MAX_LOG_LINES = 10_000


class Violation(Exception):
    """The worker broke the protocol; ``result`` is what the call returns."""

    def __init__(self, reason: str, result: RunResult | None = None) -> None:
        super().__init__(reason)
        self.result = result or RunResult.failed(INVALID_RESULT, "sandbox worker sent a malformed message")


def parse_done(worker: Worker, msg: dict[str, Any], sha: str, script_cache: int) -> RunResult:
    """Rebuild a RunResult from untrusted wire data, accepting only the exact shape."""
    cpu = msg.get("cpu")
    if type(cpu) in (int, float):
        worker.cpu = float(cpu)
    if msg.get("retire") is True:  # the worker's state is unknown after this call
        worker.retire = True
    if msg.get("cached") is True:
        worker.known[sha] = None
        worker.known.move_to_end(sha)
        while len(worker.known) > script_cache:
            worker.known.popitem(last=False)
    r = msg.get("r")
    bad = Violation("malformed result", RunResult.failed(INVALID_RESULT, "sandbox worker returned a malformed result"))
    if type(r) is not dict:
        raise bad
    verdict, fields, err, logs = r.get("verdict"), r.get("fields", {}), r.get("error"), r.get("logs", [])
    if verdict not in VERDICTS or type(fields) is not dict or type(logs) is not list:
        raise bad
    if len(logs) > MAX_LOG_LINES or any(type(line) is not str for line in logs):
        raise bad
    error: ScriptError | None = None
    if err is not None:
        if type(err) is not dict or err.get("kind") not in ERROR_KINDS or type(err.get("message")) is not str:
            raise bad
        error = ScriptError(err["kind"], bounded(err["message"]))
    if (verdict == ERROR) != (error is not None):
        raise bad
    ops = r.get("kv_ops")
    return RunResult(verdict=verdict, fields=fields, error=error, logs=logs,
                     kv_ops=ops if type(ops) is int and ops > 0 else 0)


def parse_issues(raw: Any) -> list[CompileIssue]:
    if type(raw) is not list or len(raw) > MAX_ISSUES * 10:
        raise Violation("malformed issues")
    issues: list[CompileIssue] = []
    for item in raw[:MAX_ISSUES]:
        if (
            type(item) is not list
            or len(item) != 3
            or type(item[0]) is not int
            or type(item[1]) is not int
            or type(item[2]) is not str
        ):
            raise Violation("malformed issue")
        issues.append(CompileIssue(max(1, item[0]), max(0, item[1]), bounded(item[2])))
    return issues


def describe_exit(rc: int, memory_mb: int) -> str:
    """Best-effort reason for a worker that died by itself."""
    if rc == -signal.SIGXCPU:
        return "budget exceeded: cpu time (worker stopped by the kernel CPU limit)"
    if rc == -signal.SIGKILL:
        return f"budget exceeded: memory (worker killed by the kernel; limit {memory_mb} MiB)"
    if rc == protocol.EXIT_OOM:
        return f"budget exceeded: memory (limit {memory_mb} MiB)"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"budget exceeded: memory or cpu (sandbox worker crashed with {name}; memory limit {memory_mb} MiB)"
    return f"budget exceeded: memory or cpu (sandbox worker exited with status {rc})"


def write_failed(op: Any, failure: tuple[str, str], done: RunResult) -> RunResult:
    """The result of a call whose write not waited for (``sandbox.policy.unawaited_writes``)
    failed: what waiting would have given (an uncaught ``KVError``, or the script stopped
    for an unavailable store), with the logs and KV count the call reported in ``done``."""
    kind, text = failure
    if kind == protocol.KV_ERR:
        return RunResult.failed(EXCEPTION, f"KVError: {bounded(text, 300)}", logs=done.logs, kv_ops=done.kv_ops)
    return RunResult.failed(UNAVAILABLE, f"KV backend unavailable (kv.{bounded(str(op), 40)})",
                            logs=done.logs, kv_ops=done.kv_ops)
