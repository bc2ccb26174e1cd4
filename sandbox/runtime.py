"""Script runtime (FIRST CUT: minimal guards; the hardened version replaces this)."""

from __future__ import annotations

import copy
import hashlib
import time
import types
from dataclasses import dataclass
from typing import Any

from RestrictedPython import compile_restricted_exec, safe_builtins
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safer_getattr_raise,
)

from sandbox.api import (
    ALLOW,
    BUDGET,
    DENY,
    EXCEPTION,
    INVALID_RESULT,
    MODIFY,
    UNAVAILABLE,
    Budgets,
    CompileIssue,
    KVError,
    KVPort,
    KVUnavailable,
    RunResult,
)
from sandbox.policy import SCRIPT_FILENAME, check_source


@dataclass(frozen=True)
class CompiledScript:
    code: types.CodeType
    sha256: str


class PolicyRefused(Exception):
    def __init__(self, issues: list[CompileIssue]) -> None:
        super().__init__("; ".join(f"line {i.line}: {i.message}" for i in issues))
        self.issues = issues


def compile_script(source: str) -> CompiledScript:
    issues = check_source(source)
    if issues:
        raise PolicyRefused(issues)
    result = compile_restricted_exec(source, SCRIPT_FILENAME)
    return CompiledScript(result.code, hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest())


class _Verdict:
    def __init__(self, kind: str, fields: dict[str, Any]) -> None:
        self.kind, self.fields = kind, fields


class _Stop(BaseException):
    pass


def execute(script: CompiledScript, payload: Any, kv: KVPort, budgets: Budgets) -> RunResult:
    start = time.monotonic()
    logs: list[str] = []
    ops = [0]

    def log(*args: Any) -> None:
        logs.append(" ".join(str(a) for a in args))

    class KV:
        def __getattr__(self, op: str) -> Any:
            def call(*args: Any) -> Any:
                ops[0] += 1
                return kv.call(op, list(args))
            return call

    def allow(**fields: Any) -> _Verdict:
        return _Verdict(ALLOW, fields)

    def deny(errCode: int, errMsg: str = "", errDlt: str = "") -> _Verdict:
        return _Verdict(DENY, {"errCode": errCode, "errMsg": errMsg, "errDlt": errDlt})

    builtins = dict(safe_builtins)
    builtins.update(_getattr_=safer_getattr_raise, _getitem_=lambda o, k: o[k], _getiter_=iter,
                    _iter_unpack_sequence_=guarded_iter_unpack_sequence,
                    _unpack_sequence_=guarded_unpack_sequence, _write_=full_write_guard,
                    _apply_=lambda f, *a, **k: f(*a, **k), list=list, dict=dict, set=set, sorted=sorted,
                    zip=zip, any=any, all=all, min=min, max=max, sum=sum, enumerate=enumerate)
    g: dict[str, Any] = {"__builtins__": builtins, "__name__": "script", "kv": KV(), "log": log,
                         "allow": allow, "deny": deny}

    def done(**kw: Any) -> RunResult:
        return RunResult(logs=logs, kv_ops=ops[0], elapsed_ms=(time.monotonic() - start) * 1000, **kw)

    try:
        exec(script.code, g)
        rv = g["handle"](copy.deepcopy(payload))
    except KVUnavailable as e:
        return RunResult.failed(UNAVAILABLE, str(e), logs=logs, kv_ops=ops[0])
    except KVError as e:
        return RunResult.failed(EXCEPTION, f"KVError: {e}", logs=logs, kv_ops=ops[0])
    except RecursionError as e:
        return RunResult.failed(BUDGET, f"budget exceeded: recursion ({e})", logs=logs, kv_ops=ops[0])
    except Exception as e:
        return RunResult.failed(EXCEPTION, f"{type(e).__name__}: {e}", logs=logs, kv_ops=ops[0])
    if rv is None:
        return done(verdict=ALLOW)
    if isinstance(rv, _Verdict):
        if rv.kind == ALLOW:
            return done(verdict=MODIFY if rv.fields else ALLOW, fields=dict(rv.fields))
        return done(verdict=DENY, fields=rv.fields)
    if type(rv) is dict:
        return done(verdict=MODIFY if rv else ALLOW, fields=rv)
    return RunResult.failed(INVALID_RESULT, f"handle returned {type(rv).__name__}", logs=logs, kv_ops=ops[0])
