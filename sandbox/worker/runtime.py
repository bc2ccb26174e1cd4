"""Compile a script once, run it many times: each call in fresh globals, under budgets.

``execute`` never raises for anything the script does: every outcome is a ``RunResult``
(verdict allow / modify / deny, or error with a kind and a bounded message). Only
process-level interruptions (``KeyboardInterrupt``, ``SystemExit`` from the worker's own
signal handling) pass through.

Per-process toolkit, per-call state
-----------------------------------
The guards, builtins and helpers are built ONCE per process (per thread, see below), all
bound to one ``RunState``: ``CALL``. ``execute`` resets it at the start of every call (``begin``: the
call's budgets and KV port, zeroed counters, a new log list, no stop, empty caches) and
parks it at the end (``end``: no port, no caches, an idle stop that every guard raises).
Each call still gets fresh globals: a copy of ``_GLOBALS`` the module runs in or, for a
module that only defines functions and constants (``CompiledScript.definitions_only``),
run once per thread, the same dict refilled with the module's bindings at the start of
every call and emptied at its end.

Why this cannot leak between calls:

- the shared objects hold no per-call data: every counter, cache, log line and the port
  live in ``CALL``, which ``begin`` overwrites field by field;
- scripts cannot change the shared objects: the builtins dict is reachable only as the
  frame's builtins (``__builtins__``, ``globals()`` and underscore attributes are refused
  at upload; module-level assignments go to the fresh globals), functions and facades
  refuse attribute writes (``_write_`` allows dict/list/set only), and facade state is in
  underscore slots;
- nothing a script makes survives the call: the result is copied into plain JSON data,
  logs and error messages are strings, the globals dict is cleared;
- even if something did survive, it would act on ``CALL`` as it is *then*: outside a call
  that is the idle stop (unusable), inside a later call it is that call's own budgets.

One call at a time per toolkit: ``execute`` is not reentrant and refuses a nested call
(``CALL`` is not idle) instead of sharing ``CALL``. Each thread gets its own toolkit and
``CALL`` (built on its first call; the importing thread's are ``CALL`` and ``_GLOBALS``),
so threads never share per-call state. No lock: nothing can be left held if a signal
interrupts a call at a bad moment.
"""

from __future__ import annotations

import threading
import time
import types
from dataclasses import dataclass
from typing import Any

import orjson

from sandbox.api import (
    ALLOW,
    BUDGET,
    DENY,
    EXCEPTION,
    INVALID_RESULT,
    MAX_REJECT_TEXT,
    MODIFY,
    POLICY,
    Budgets,
    CompileIssue,
    KVPort,
    RunResult,
    bounded,
    script_sha,
)
from sandbox.policy import KV_CONST_KEY, KV_DIRECT, KV_UNAWAITED, SCRIPT_FILENAME, transform_module
from sandbox.worker.budget import CLOCK_EVERY, IDLE, RunState, Stop, utf8_clean
from sandbox.worker.convert import (
    COPIED_AS_IS,
    InvalidResult,
    copy_payload,
    encode_plain,
    exception_message,
    plain_copy,
    scrub,
)
from sandbox.worker.guards import SUBSCRIPTABLE, make_hooks
from sandbox.worker.helpers import FACADE_CLASSES, SUBSCRIPTABLE_FACADES, PrintCollector, Verdict, make_helpers
from sandbox.worker.kvapi import CONST_KEY_METHODS, KV, UNAWAITED_METHODS
from sandbox.worker.methods import build_attrs
from sandbox.worker.safe_builtins import SafeType, make_builtins

_ATTRS = build_attrs([*FACADE_CLASSES, KV, SafeType])
_SUBSCRIPTABLE = frozenset({*SUBSCRIPTABLE, *SUBSCRIPTABLE_FACADES})


@dataclass(frozen=True)
class CompiledScript:
    code: types.CodeType
    sha256: str
    # The module only binds functions and constants (sandbox.policy.definitions_only): it is
    # run once per thread and its bindings reused (see execute).
    definitions_only: bool = False


class PolicyRefused(Exception):
    """The source was refused at compile time; ``issues`` says where and why."""

    def __init__(self, issues: list[CompileIssue]) -> None:
        first = issues[0] if issues else CompileIssue(1, 0, "refused")
        super().__init__(bounded(f"line {first.line}, col {first.col}: {first.message}"))
        self.issues = issues


def compile_script(source: str) -> CompiledScript:
    code, issues, only = transform_module(source)
    if issues or not isinstance(code, types.CodeType):
        raise PolicyRefused(issues or [CompileIssue(1, 0, "source cannot be compiled")])
    digest = script_sha(source)
    return CompiledScript(code, digest, only)


def _script_line(exc: BaseException) -> int | None:
    """The innermost line of the script's own frames (never host frames) in a traceback."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == SCRIPT_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _at(line: int | None) -> str:
    return f" (line {line})" if line else ""


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    try:
        text = exception_message(exc)
    except Exception:
        text = ""
    text = scrub(bounded(text, 400))
    return f"{name}: {text}" if text else name


def build_toolkit(st: RunState) -> dict[str, Any]:
    """The globals template: builtins, guard hooks and helpers, all bound to ``st``."""
    builtins = make_builtins(st)
    builtins.update(make_hooks(st, _ATTRS, _SUBSCRIPTABLE, PrintCollector))
    kv = KV(st)
    # kv.<op>(...) on the global kv is compiled to a direct call of the bound method
    # (sandbox.policy.KV_DIRECT): the same method, without the _getattr_ hook.
    builtins.update({direct: getattr(kv, name) for name, direct in KV_DIRECT.items()})
    builtins.update({direct: types.MethodType(CONST_KEY_METHODS[name], kv) for name, direct in KV_CONST_KEY.items()})
    builtins.update({nr: types.MethodType(UNAWAITED_METHODS[name], kv) for name, nr in KV_UNAWAITED.items()})
    g: dict[str, Any] = {"__builtins__": builtins, "__name__": "script", "kv": kv}
    g.update(make_helpers(st))
    return g


# A module run once (CompiledScript.definitions_only): id(script) -> (script, its globals
# dict, the bindings the module made, its handle). Per thread, like the toolkit.
_Modules = dict[int, tuple[CompiledScript, dict[str, Any], dict[str, Any], types.FunctionType]]
MAX_KEPT_MODULES = 64  # as many as a worker keeps compiled (sandbox.worker.main.SCRIPT_CACHE_SIZE)


def _new_toolkit() -> tuple[RunState, dict[str, Any], _Modules]:
    st = RunState(Budgets())
    st.end()  # idle until a call begins
    toolkit = (st, build_toolkit(st), {})
    _PER_THREAD.toolkit = toolkit
    return toolkit


# The per-call state and the toolkit bound to it (see the module docstring), per thread.
_PER_THREAD = threading.local()
CALL, _GLOBALS, _ = _new_toolkit()
_loads, _dumps = orjson.loads, orjson.dumps
_FunctionType = types.FunctionType
_new_object = object.__new__
_monotonic_ns = time.monotonic_ns


def _verdict(rv: Any, st: RunState) -> tuple[str, dict[str, Any], bytes | None]:
    """Turn handle()'s return value into (verdict, plain fields, the fields' JSON or None).

    Raises InvalidResult."""
    if rv is None:
        return ALLOW, {}, None
    if type(rv) is Verdict:
        if rv.kind == DENY:
            return DENY, _deny_fields(*rv.fields), None
        rv = rv.fields
    if type(rv) is not dict:
        raise InvalidResult(
            f"handle() must return allow(...), deny(...), None or a dict, not {type(rv).__name__}"
        )
    if not rv:
        return ALLOW, {}, None
    fields = _flat_copy(rv, st)
    if fields is None:
        fields = plain_copy(rv, st, "result", 0)
    return MODIFY, fields, _encoded(fields, st)


def _deny_fields(code: Any, msg: Any, dlt: Any) -> dict[str, Any]:
    """A deny is always a deny: values OpenIM cannot use are passed on marked, and the host
    maps them (server/service/callbacks.py deny_reply) instead of continuing. Only plain
    data crosses to the host: no repr() of script objects (it would run script code), no
    str() of a huge int."""
    if type(code) is not int:
        code = f"<{type(code).__name__}>"
    elif not -(2**63) <= code < 2**63:  # an int in errCode's range passes as it is
        code = "<int outside int64>"
    return {"errCode": code, "errMsg": _deny_text(msg), "errDlt": _deny_text(dlt)}


def _deny_text(text: Any) -> str | None:
    if type(text) is not str:
        return None  # the host sends "" and says so
    if len(text) > MAX_REJECT_TEXT:
        text = text[: MAX_REJECT_TEXT + 1]  # the host sees it was too long and cuts it
    return utf8_clean(text)


def _flat_copy(rv: dict[Any, Any], st: RunState) -> dict[str, Any] | None:
    """``plain_copy(rv, st, "result", 0)`` for the common shape: str keys, values that are
    str/bool/None or lists of those; None for anything else (nothing charged yet, so the
    caller takes plain_copy from the top, for its checks, conversions and messages).

    Same copy and the same steps charged in total (one per field, one per list item): the
    result of nearly every call takes this path, where plain_copy's generality costs more
    than the rest of the conversion."""
    fields = {}
    items = len(rv)
    for key, value in rv.items():
        t = type(value)
        if type(key) is not str:
            return None
        if t is str or t is bool or value is None:
            fields[key] = value
        elif t is list and _flat_list(value):
            items += len(value)
            fields[key] = list(value)
        else:
            return None
    # st.charge(items), written out: a method call costs as much as the rest of it
    st.steps_left -= items
    st.ticks_left -= 1 if items < 1024 else CLOCK_EVERY
    if st.ticks_left <= 0 or st.steps_left < 0:  # or stopped (budget.STOPPED_TICKS)
        st._slow_step()
    return fields


def _flat_list(value: list[Any]) -> bool:
    """Every item is a str, bool or None (COPIED_AS_IS)."""
    if len(value) > 16:  # a set of the item types: C speed, but a fixed cost
        return COPIED_AS_IS.issuperset(map(type, value))
    for item in value:
        t = type(item)
        if not (t is str or t is bool or item is None):
            return False
    return True


def _encoded(fields: dict[str, Any], st: RunState) -> bytes:
    """The fields' JSON, within the result budget (InvalidResult otherwise)."""
    try:  # encode_plain(fields), inlined for the common case
        data = _dumps(fields)
    except (TypeError, ValueError):
        data = encode_plain(fields)  # raises InvalidResult with its message
    if len(data) > st.budgets.result_bytes:
        raise InvalidResult(f"result is {len(data)} bytes of JSON (limit {st.budgets.result_bytes})")
    return data


def execute(script: CompiledScript, payload: Any, kv: KVPort, budgets: Budgets) -> RunResult:
    """Run ``handle(req)`` once. Never raises for anything the script does.

    ``payload`` is the callback's JSON data, which the script gets a fresh plain copy of
    (mutating it changes nothing), or the callback's JSON text as ``bytes``: parsed here
    into data nobody else holds, so no copy is needed (invalid JSON is an ``exception``
    error; no script code runs).
    """
    try:
        st, template, modules = _PER_THREAD.toolkit
    except AttributeError:
        st, template, modules = _new_toolkit()
    if st.dead is not IDLE:
        # A nested call would share this thread's state: refuse rather than mix two calls.
        return RunResult.failed(POLICY, "sandbox error: another call is already running in this thread")
    g: dict[str, Any] | None = None
    try:
        st.begin(budgets, kv)
        if type(payload) is bytes:
            req = _loads(payload)
        else:
            try:  # copy_payload(payload), inlined: a fresh plain copy the script may mutate
                req = _loads(_dumps(payload))
            except (TypeError, ValueError):
                req = copy_payload(payload)
        kept = modules.get(id(script)) if script.definitions_only else None
        if kept is not None and kept[0] is script:
            # The module already ran in this thread: the same bindings in the same (emptied
            # at the end of every call) dict, so its functions see them as their globals.
            _script, g, bindings, handle = kept
            g.update(bindings)
        else:
            g = template.copy()
            # -- the script runs here --
            exec(script.code, g)
            handle = g.get("handle")
            if type(handle) is not _FunctionType or handle.__code__.co_filename != SCRIPT_FILENAME:
                st.refuse("'handle' must be the script's own function")
            if script.definitions_only:
                if len(modules) >= MAX_KEPT_MODULES:
                    del modules[next(iter(modules))]  # the oldest
                modules[id(script)] = (script, g, g.copy(), handle)
        rv = handle(req)
        if st.dead is not None:  # a stop swallowed on the way out (should not be possible)
            st.reraise()
        if rv is None:
            verdict, fields, data = ALLOW, {}, None
        else:
            verdict, fields, data = _verdict(rv, st)
            if st.dead is not None:
                st.reraise()
        # RunResult(verdict, fields, None, logs, kv_ops, elapsed_ms, data) without running
        # the dataclass __init__ (its default-factory checks cost more than the stores).
        result = _new_object(RunResult)
        result.verdict = verdict
        result.fields = fields
        result.error = None  # (slots: every field must be set)
        result.logs = st.logs
        result.kv_ops = st.kv_ops
        result.elapsed_ms = (_monotonic_ns() - st.started) // 1000 / 1000  # st.elapsed_ms(), inlined
        result.fields_json = data
        return result
    except (KeyboardInterrupt, SystemExit):
        raise  # the worker's own signals; a script cannot name or raise these
    except BaseException as exc:
        kind, message = _classify(exc, st)
        return RunResult.failed(kind, utf8_clean(message), logs=st.logs, kv_ops=st.kv_ops, elapsed_ms=st.elapsed_ms())
    finally:
        try:
            if g is not None:
                g.clear()  # break function <-> globals cycles now, not in a later GC
        finally:
            st.end()


def _classify(exc: BaseException, st: RunState) -> tuple[str, str]:
    line = _script_line(exc)
    # A stop always wins: a `finally:` may have replaced it with an ordinary exception.
    dead = st.dead
    if dead is not None:
        return dead.kind, dead.message + _at(line)
    if isinstance(exc, Stop):
        return exc.kind, exc.message + _at(line)
    if isinstance(exc, InvalidResult):
        return INVALID_RESULT, str(exc)
    if isinstance(exc, MemoryError):
        return BUDGET, "budget exceeded: memory (the script allocated too much)" + _at(line)
    if isinstance(exc, RecursionError):
        return BUDGET, "budget exceeded: recursion (interpreter stack limit)" + _at(line)
    if line is None and not isinstance(exc, Exception):
        return POLICY, f"sandbox error: {type(exc).__name__}"
    return EXCEPTION, _describe(exc) + _at(line)


__all__ = ["CompiledScript", "PolicyRefused", "compile_script", "execute"]
