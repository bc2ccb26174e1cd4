"""The script's ``kv`` object: exactly the operations in ``sandbox.kvops.OPS``, nothing else.

Every method is built from its ``kvops.Op`` (``_method``): it takes the documented parameters
(``op.params``), checks them as the host will (so a bad key fails at the script's own line
with a clear message), counts the op against ``budgets.kv_ops``, calls ``port.call`` and
checks and converts the plain JSON answer by its kind (``op.answer``: a set for
``smembers``, a list of bool for ``smismember``...). The ops shaped (key) or (key, value)
(``op.key_shaped``), the most used ones, check their arguments inline (``_key_op``,
``_key_value_op``: the same checks, order and messages as ``kvops.validate``, which handles
everything else and every argument those fast tests do not accept unchanged).

There is one ``KV`` per process (``sandbox.worker.runtime``): it reads the call's port from the
``RunState``, which holds it only while a call runs.

Failures:
- a refused operation (validation or the store's ``KVRefused``) raises the script-visible
  ``KVError`` (an ``Exception``: scripts may catch it, e.g. for a wrong key type);
- ``KVUnavailable`` (or anything unexpected from the port) stops the script for good with
  error kind ``unavailable``: a script must not carry on as if it had an answer;
- ``KVDeadline`` (a port that waited past the call's deadline) is the ``wall_ms`` budget;
- ``RecursionError`` (the script's stack limit, reached inside the port) passes through as
  the recursion budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from sandbox import kvops
from sandbox.api import KVDeadline, KVRefused, KVUnavailable, bounded
from sandbox.kvops import Op
from sandbox.worker.budget import BackendUnavailable, RunState
from sandbox.worker.convert import scrub


class KVError(Exception):
    """Script-visible: a KV operation was refused (bad key/value, wrong type, limits)."""


# -- answers ---------------------------------------------------------------------------------
# What an answer of each kind (kvops.Op.answer) must look like, and how it is handed to the
# script (None: as it is). The host is trusted less than it seems: a malformed answer stops
# the script (BackendUnavailable) instead of reaching it.


def _is_bool(v: Any) -> bool:
    return type(v) is bool or (type(v) is int and v in (0, 1))


def _str_list(v: Any) -> bool:
    return type(v) is list and all(type(x) is str for x in v)


def _str_map(v: Any) -> bool:
    return type(v) is dict and all(type(k) is str and type(x) is str for k, x in v.items())


def _bools(v: Any) -> bool:
    return type(v) is list and (set(map(type, v)) <= _BOOL or all(_is_bool(x) for x in v))


def _to_bools(v: list[Any]) -> list[bool]:
    return list(v) if set(map(type, v)) <= _BOOL else [x is True or x == 1 for x in v]


_BOOL = {bool}


def _any(v: Any) -> bool:
    return True


def _true(v: Any) -> bool:
    return True


_ANSWERS: dict[str, tuple[Callable[[Any], bool], Callable[[Any], Any] | None]] = {
    kvops.OPT_STR: (lambda v: v is None or type(v) is str, None),
    kvops.NUM: (lambda v: type(v) is int, None),
    kvops.BOOL: (_is_bool, bool),
    kvops.TRUE: (_any, _true),
    kvops.STRS: (_str_list, list),
    kvops.STR_SET: (_str_list, set),
    kvops.BOOLS: (_bools, _to_bools),
    kvops.STR_MAP: (_str_map, dict),
}


def _answer(st: RunState, op: Op, result: Any) -> Any:
    """The port's answer, checked and converted into what the script expects."""
    check, convert = _ANSWERS[op.answer]
    if not check(result):
        st.stop(BackendUnavailable(f"KV backend returned malformed data (kv.{op.name})"))
    if type(result) is list or type(result) is dict:
        st.charge(len(result))
    return result if convert is None else convert(result)


# -- one call --------------------------------------------------------------------------------


def _send(st: RunState, op: Op, wire: list[Any], wait: bool = True) -> Any:
    """Count the op against ``kv_ops``, call the port, check and convert the answer.

    The caller counted the op as a loop tick first (the clock is read now and then, as for
    any guard; the tick is also the stop check, see ``budget.STOPPED_TICKS``, so it comes
    before the port). A port that waits (the worker's, a round trip to the host) raises
    ``KVDeadline`` itself when the call's deadline passed while it waited. The port runs at
    the script's own stack depth (no recursion-limit headroom: that cost two C calls per op),
    so a script at the interpreter's stack limit can make RecursionError fire inside it; the
    worker's port (``sandbox.worker.main.IpcKV``) then refuses every later op of the call,
    and the worker is retired after it.

    ``wait=False``: a write whose answer the script drops (``sandbox.policy.unawaited_writes``)
    goes out through the port's ``post`` without waiting, when the port has one; the answer
    is None.
    """
    if st.kv_ops >= st.kv_ops_max:
        st.exceeded("kv_ops", st.kv_ops_max)
    st.kv_ops += 1
    try:
        if not wait:
            post = getattr(st.port, "post", None)
            if post is not None:
                post(op.name, wire)
                return None
        result = st.port.call(op.name, wire)
    except Exception as e:
        _port_failed(st, op.name, e)
    if (result is True or result is False) and op.answer is kvops.BOOL:
        return result  # the common answer of sismember/exists/expire: already what bool() gives
    return _answer(st, op, result)


def _port_failed(st: RunState, name: str, e: Exception) -> NoReturn:
    """The port raised instead of answering (a ``Stop`` is a BaseException: never here)."""
    if isinstance(e, KVRefused):  # the store refused the op: the script may catch this
        raise KVError(bounded(scrub(str(e)), 300)) from None
    if isinstance(e, KVUnavailable):
        st.stop(BackendUnavailable(f"KV backend unavailable (kv.{name})"))
    if isinstance(e, KVDeadline):
        st.exceeded("wall_ms", st.budgets.wall_ms)
    if isinstance(e, RecursionError):
        raise e  # the script's own stack limit, reached inside the port: a recursion budget error
    # a broken port must not look like an answer
    st.stop(BackendUnavailable(f"KV backend failed (kv.{name}: {type(e).__name__})"))


# -- the calling conventions (one per shape of kvops.Op) -------------------------------------


def _checked_key(key: Any, limit: int) -> str:
    """``kvops.check_key``, its refusal raised as the script's ``KVError``."""
    try:
        return kvops.check_key(key, limit)
    except KVRefused as e:
        raise KVError(str(e)) from None


def _checked_value(op: Op, value: Any, limit: int) -> str:
    try:
        return kvops.check_scalar(value, op.labels["value"], limit)
    except KVRefused as e:
        raise KVError(str(e)) from None


# The ops shaped (key) or (key, value), the most used, check inline and call the port
# themselves (_send written out: one frame per op, about 3% of a typical script's cost).
# The fast tests accept only what check_key / check_scalar return unchanged (an exact,
# non-empty, printable ASCII key within the limit; an exact ASCII str value within the
# limit); anything else takes those checks. ``const``: the key is a constant the policy
# already found non-empty printable ASCII (sandbox.policy.KV_CONST_KEY), so only the per-call
# length limit is left to check. The tick comes first: it is also the stop check, which must
# come before the port.


def _key_op(st: RunState, op: Op, const: bool, key: Any) -> Any:
    st.ticks_left -= 1
    if st.ticks_left <= 0:  # a clock check is due, or the script is stopped
        st.check_clock()
    limit = st.kv_key_bytes
    if const:
        if len(key) > limit:
            key = _checked_key(key, limit)
    elif not (type(key) is str and key.isascii() and 0 < len(key) <= limit and key.isprintable()):
        key = _checked_key(key, limit)
    if st.kv_ops >= st.kv_ops_max:
        st.exceeded("kv_ops", st.kv_ops_max)
    st.kv_ops += 1
    try:
        result = st.port.call(op.name, [key])
    except Exception as e:
        _port_failed(st, op.name, e)
    if (result is True or result is False) and op.answer is kvops.BOOL:
        return result
    return _answer(st, op, result)


def _key_value_op(st: RunState, op: Op, const: bool, key: Any, value: Any) -> Any:
    st.ticks_left -= 1
    if st.ticks_left <= 0:
        st.check_clock()
    limit = st.kv_key_bytes
    if const:
        if len(key) > limit:
            key = _checked_key(key, limit)
    elif not (type(key) is str and key.isascii() and 0 < len(key) <= limit and key.isprintable()):
        key = _checked_key(key, limit)
    limit = st.kv_value_bytes
    if not (type(value) is str and len(value) <= limit and value.isascii()):
        value = _checked_value(op, value, limit)
    if st.kv_ops >= st.kv_ops_max:
        st.exceeded("kv_ops", st.kv_ops_max)
    st.kv_ops += 1
    try:
        result = st.port.call(op.name, [key, value])
    except Exception as e:
        _port_failed(st, op.name, e)
    if (result is True or result is False) and op.answer is kvops.BOOL:
        return result
    return _answer(st, op, result)


def _validated_op(st: RunState, op: Op, args: list[Any], wait: bool = True) -> Any:
    """Any argument shape, checked by ``kvops.validate`` (what the host runs too)."""
    st.ticks_left -= 1
    if st.ticks_left <= 0:
        st.check_clock()
    try:
        _op, wire = kvops.validate(op.name, args, st.kv_key_bytes, st.kv_value_bytes)
    except KVRefused as e:
        raise KVError(str(e)) from None
    return _send(st, op, wire, wait)


def _member_list_op(st: RunState, op: Op, key: Any, members: Any) -> Any:
    """``smismember(key, members)``: a list or tuple; none at all is answered here."""
    if type(members) is tuple:
        members = list(members)
    if type(members) is list and not members:
        # Nothing to ask: answer without a round trip (the key is still checked).
        _checked_key(key, st.kv_key_bytes)
        return []
    return _validated_op(st, op, [key, members])


def _field_or_mapping_op(st: RunState, op: Op, key: Any, field_or_mapping: Any, value: Any,
                         wait: bool = True) -> Any:
    """``hset(key, field, value)`` or ``hset(key, mapping)``."""
    if type(field_or_mapping) is dict:
        if value is not None:
            raise KVError(f"kv.{op.name}: pass either (field, value) or one mapping")
        return _validated_op(st, op, [key, field_or_mapping], wait)
    if value is None:
        raise KVError(f"kv.{op.name}: missing value")
    # An unhashable field cannot key a dict: validation then refuses the missing mapping.
    mapping = {field_or_mapping: value} if type(field_or_mapping) in (str, int, float, bool) else None
    return _validated_op(st, op, [key, mapping], wait)


# -- the methods -----------------------------------------------------------------------------


def _method(op: Op, const_key: bool = False, wait: bool = True) -> Callable[..., Any]:
    """``def <op.name>(self, <op.params>): return <convention>(self._st, op, <arguments>)``.

    Built from the table's signature text the way ``dataclasses`` builds ``__init__`` (the
    text comes from ``kvops.OPS``, never from a script), so the script sees the documented
    parameter names and defaults (``kv.incr(k, ttl=60)``, ``kv.sismember(k, member=m)``)
    and a call costs one plain frame before its convention. ``wait=False``: the variant of a
    write that does not wait for its answer (``UNAWAITED_METHODS``).
    """
    params = [p.strip() for p in op.params.split(",")]
    names = [p.lstrip("*").split("=")[0] for p in params]
    if op.key_shaped and wait:
        impl: Callable[..., Any] = _key_op if len(names) == 1 else _key_value_op
        passed = ", ".join([str(const_key), *names])
    elif op.convention == kvops.MEMBER_LIST:
        impl, passed = _member_list_op, ", ".join(names)
    elif op.convention == kvops.FIELD_OR_MAPPING:
        impl, passed = _field_or_mapping_op, ", ".join(names)
    else:
        impl = _validated_op
        wire = [f"list({n})" if p.startswith("*") else n for p, n in zip(params, names, strict=True)]
        passed = "[" + ", ".join(wire) + "]"
    if not wait:
        passed += ", wait=False"
    source = f"def {op.name}(self, {op.params}):\n    return _impl(self._st, _op, {passed})\n"
    namespace: dict[str, Any] = {"_impl": impl, "_op": op}
    exec(source, namespace)  # the source is built from kvops.OPS only, never from a script
    method = namespace[op.name]
    method.__qualname__ = f"KV.{op.name}"
    method.__doc__ = op.doc
    return method


class KV:
    """The ``kv`` global: one method per ``kvops.OPS`` entry (``PUBLIC``), nothing else."""

    __slots__ = ("_st",)
    PUBLIC = frozenset(kvops.OPS)

    def __init__(self, st: RunState) -> None:
        self._st = st  # the call's port is st.port (None outside a call)

    def script_repr(self) -> str:
        return "<kv>"

    __repr__ = script_repr


for _op in kvops.OPS.values():
    setattr(KV, _op.name, _method(_op))
del _op

# ``kv.<op>("constant key", ...)`` compiled by the policy (``sandbox.policy.KV_CONST_KEY``):
# the same methods, minus the key shape checks the policy already made on the constant.
CONST_KEY_METHODS: dict[str, Any] = {op.name: _method(op, const_key=True) for op in kvops.OPS.values() if op.key_shaped}
# ``kv.<write>(...)`` as a statement of its own in ``handle`` (``sandbox.policy.KV_UNAWAITED``):
# sent without waiting for the answer.
UNAWAITED_METHODS: dict[str, Any] = {op.name: _method(op, wait=False) for op in kvops.OPS.values() if op.writes}
