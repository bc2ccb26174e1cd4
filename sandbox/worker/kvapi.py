"""The script's ``kv`` object: exactly the operations in ``sandbox.kvops.OPS``, nothing else.

Each method packs its arguments into the wire form, checks them with ``kvops.validate``
(so a bad key fails at the script's own line with a clear message), counts the op against
``budgets.kv_ops``, calls ``port.call`` and converts the plain JSON answer into what the
script expects (``smembers`` -> set, ``smismember`` -> list of bool...). Ops taking just a
key, or a key and one value, call ``validate``'s own per-argument checks directly
(same checks, same order, same messages, without the generic dispatch).

There is one ``KV`` per process (``sandbox.worker.runtime``): it reads the call's port from the
``RunState``, which holds it only while a call runs.

Failures:
- a refused operation (validation or the store's ``KVError``) raises the script-visible
  ``KVError`` (an ``Exception``: scripts may catch it, e.g. for a wrong key type);
- ``KVUnavailable`` (or anything unexpected from the port) stops the script for good with
  error kind ``unavailable``: a script must not carry on as if it had an answer;
- ``KVDeadline`` (a port that waited past the call's deadline) is the ``wall_ms`` budget;
- ``RecursionError`` (the script's stack limit, reached inside the port) passes through as
  the recursion budget.
"""

from __future__ import annotations

from typing import Any, NoReturn

from sandbox import kvops
from sandbox.api import KVDeadline, KVUnavailable, bounded
from sandbox.api import KVError as PortKVError
from sandbox.worker.budget import BackendUnavailable, RunState
from sandbox.worker.convert import scrub


class KVError(Exception):
    """Script-visible: a KV operation was refused (bad key/value, wrong type, limits)."""


def _str_or_none(v: Any) -> bool:
    return v is None or type(v) is str


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_bool(v: Any) -> bool:
    return type(v) is bool or (type(v) is int and v in (0, 1))


def _str_list(v: Any) -> bool:
    return type(v) is list and all(type(x) is str for x in v)


# What each op's answer must look like, and how it is handed to the script.
_RESULTS: dict[str, tuple[Any, Any]] = {
    "get": (_str_or_none, None),
    "set": (lambda v: True, lambda v: True),
    "delete": (_is_int, None),
    "exists": (_is_bool, bool),
    "incr": (_is_int, None),
    "expire": (_is_bool, bool),
    "ttl": (_is_int, None),
    "sadd": (_is_int, None),
    "srem": (_is_int, None),
    "sismember": (_is_bool, bool),
    "smismember": (lambda v: type(v) is list and all(_is_bool(x) for x in v), lambda v: [bool(x) for x in v]),
    "smembers": (_str_list, set),
    "scard": (_is_int, None),
    "hget": (_str_or_none, None),
    "hset": (_is_int, None),
    "hdel": (_is_int, None),
    "hgetall": (lambda v: type(v) is dict and all(type(k) is str and type(x) is str for k, x in v.items()), dict),
    "hincrby": (_is_int, None),
    "lpush": (_is_int, None),
    "rpush": (_is_int, None),
    "lrange": (_str_list, list),
    "ltrim": (lambda v: True, lambda v: True),
    "llen": (_is_int, None),
}
assert set(_RESULTS) == set(kvops.OPS), "every KV op needs a result check"
# Ops whose answer is checked by ``_is_bool``: a True/False answer is returned as it is.
_BOOL_OPS = frozenset(name for name, (check, _convert) in _RESULTS.items() if check is _is_bool)
assert {"sismember", "exists", "expire"} == _BOOL_OPS


def _values(args: tuple[Any, ...]) -> list[Any]:
    return list(args)


# Ops whose arguments are (key,) or (key, value): checked without kvops.validate's loop.
_KEY_OPS = frozenset(name for name, op in kvops.OPS.items() if op.args == (kvops.KEY,))
_KEY_VALUE_OPS = frozenset(name for name, op in kvops.OPS.items() if op.args == (kvops.KEY, kvops.VALUE))
_VALUE_LABEL = {name: f"kv.{name}: value" for name in _KEY_VALUE_OPS}
_VALUE_PARAM = {"sismember": "member", "hget": "field"}  # the documented parameter names
assert set(_VALUE_PARAM) == _KEY_VALUE_OPS
assert {"get", "delete", "exists", "ttl", "smembers", "scard", "hgetall", "llen"} <= _KEY_OPS
assert {"sismember", "hget"} <= _KEY_VALUE_OPS
assert all(kvops._LABELS[name]["value"] == label for name, label in _VALUE_LABEL.items())
_check_key = kvops.check_key
_check_value = kvops._scalar


def _op(st: RunState, b: Any, name: str, wire: list[Any]) -> Any:
    """Count the op, call the port, check and convert the answer.

    The caller counted the op as a loop tick (the clock is read now and then, as for any
    guard; the tick is also the stop check, see ``budget.STOPPED_TICKS``): a port
    that waits (the worker's, a round trip to the host) raises ``KVDeadline`` itself when
    the call's deadline passed while it waited.

    The port runs at the script's own stack depth (no recursion-limit headroom: that cost
    two C calls per op). A script at the interpreter's stack limit can therefore make
    RecursionError fire inside the port; the worker's port (``sandbox.worker.main.IpcKV``) then
    refuses every later op of the call, and the worker is retired after it.
    """
    if st.kv_ops >= b.kv_ops:
        st.exceeded("kv_ops", b.kv_ops)
    st.kv_ops += 1
    try:
        result = st.port.call(name, wire)
    except Exception as e:
        _port_failed(st, name, e)
    if (result is True or result is False) and name in _BOOL_OPS:
        return result  # the common answer of sismember/exists/expire: already what bool() gives
    return _answer(st, name, result)


def _answer(st: RunState, name: str, result: Any) -> Any:
    """The port's answer, checked and converted into what the script expects."""
    check, convert = _RESULTS[name]
    if not check(result):
        st.stop(BackendUnavailable(f"KV backend returned malformed data (kv.{name})"))
    if type(result) is list or type(result) is dict:
        st.charge(len(result))
    return result if convert is None else convert(result)


def _port_failed(st: RunState, name: str, e: Exception) -> NoReturn:
    """The port raised instead of answering (a ``Stop`` is a BaseException: never here)."""
    if isinstance(e, PortKVError):  # the store refused the op: the script may catch this
        raise KVError(bounded(scrub(str(e)), 300)) from None
    if isinstance(e, KVUnavailable):
        st.stop(BackendUnavailable(f"KV backend unavailable (kv.{name})"))
    if isinstance(e, KVDeadline):
        st.exceeded("wall_ms", st.budgets.wall_ms)
    if isinstance(e, RecursionError):
        raise e  # the script's own stack limit, reached inside the port: a recursion budget error
    # a broken port must not look like an answer
    st.stop(BackendUnavailable(f"KV backend failed (kv.{name}: {type(e).__name__})"))


def _bad_key(key: Any, limit: int) -> str:
    try:
        return _check_key(key, limit)
    except PortKVError as e:
        raise KVError(str(e)) from None


def _bad_value(value: Any, label: str, limit: int) -> str:
    try:
        return _check_value(value, label, limit)
    except PortKVError as e:
        raise KVError(str(e)) from None


def _fast_method(name: str, key_is_valid: bool = False) -> Any:
    """``kv.<name>(key)`` (``_KEY_OPS``) or ``kv.<name>(key, value)`` (``_KEY_VALUE_OPS``): the
    most used ops, written out for speed. Same checks, order and messages as
    ``kvops.validate`` (the fast tests accept only what its checks return unchanged: an
    exact, non-empty, printable ASCII key and an exact ASCII value within the limits;
    anything else takes those checks), then ``_op`` written out (one frame less per op).

    ``key_is_valid``: the key is a constant the policy already found to be a non-empty
    printable ASCII str (``sandbox.policy.KV_CONST_KEY``): only its length is checked here.

    The op's tick comes first: it is also the stop check (``budget.STOPPED_TICKS``), which
    must come before the port is called.
    """
    is_bool = name in _BOOL_OPS

    def key_op(self: KV, key: Any) -> Any:
        st = self._st
        st.ticks_left -= 1
        if st.ticks_left <= 0:  # a clock check is due, or the script is stopped
            st.check_clock()
        limit = st.kv_key_bytes
        if key_is_valid:
            if len(key) > limit:
                key = _bad_key(key, limit)
        elif not (type(key) is str and key.isascii() and 0 < len(key) <= limit and key.isprintable()):
            key = _bad_key(key, limit)
        if st.kv_ops >= st.kv_ops_max:
            st.exceeded("kv_ops", st.kv_ops_max)
        st.kv_ops += 1
        try:
            result = st.port.call(name, [key])
        except Exception as e:
            _port_failed(st, name, e)
        if is_bool and (result is True or result is False):
            return result  # the common answer of exists/expire: already what bool() gives
        return _answer(st, name, result)

    def key_value_op(self: KV, key: Any, value: Any) -> Any:
        st = self._st
        st.ticks_left -= 1
        if st.ticks_left <= 0:  # a clock check is due, or the script is stopped
            st.check_clock()
        limit = st.kv_key_bytes
        if key_is_valid:
            if len(key) > limit:
                key = _bad_key(key, limit)
        elif not (type(key) is str and key.isascii() and 0 < len(key) <= limit and key.isprintable()):
            key = _bad_key(key, limit)
        limit = st.kv_value_bytes
        if not (type(value) is str and len(value) <= limit and value.isascii()):
            value = _bad_value(value, label, limit)
        if st.kv_ops >= st.kv_ops_max:
            st.exceeded("kv_ops", st.kv_ops_max)
        st.kv_ops += 1
        try:
            result = st.port.call(name, [key, value])
        except Exception as e:
            _port_failed(st, name, e)
        if is_bool and (result is True or result is False):
            return result  # the common answer of sismember: already what bool() gives
        return _answer(st, name, result)

    if name in _KEY_OPS:
        method = key_op
    else:
        label = _VALUE_LABEL[name]
        method = key_value_op
        # The script-visible signature keeps the documented parameter name.
        code = method.__code__
        names = code.co_varnames
        method.__code__ = code.replace(co_varnames=(names[0], names[1], _VALUE_PARAM[name], *names[3:]))
    method.__name__ = name
    method.__qualname__ = f"KV.{name}"
    return method


class KV:
    """The ``kv`` global. Only the methods below are reachable (``PUBLIC``)."""

    __slots__ = ("_st",)
    PUBLIC = frozenset(kvops.OPS)

    def __init__(self, st: RunState) -> None:
        self._st = st  # the call's port is st.port (None outside a call)

    def script_repr(self) -> str:
        return "<kv>"

    __repr__ = script_repr

    def _call(self, name: str, args: list[Any]) -> Any:
        """An op checked by ``kvops.validate`` (any argument shape)."""
        st = self._st
        st.ticks_left -= 1
        if st.ticks_left <= 0:  # a clock check is due, or the script is stopped
            st.check_clock()
        b = st.budgets
        try:
            _spec, wire = kvops.validate(name, args, b.kv_key_bytes, b.kv_value_bytes)
        except PortKVError as e:
            raise KVError(str(e)) from None
        return _op(st, b, name, wire)

    # -- strings --
    get = _fast_method("get")

    def set(self, key: Any, value: Any, ttl: Any = None) -> Any:
        return self._call("set", [key, value, ttl])

    delete = _fast_method("delete")

    exists = _fast_method("exists")

    def incr(self, key: Any, by: Any = 1, ttl: Any = None) -> Any:
        return self._call("incr", [key, by, ttl])

    def expire(self, key: Any, ttl: Any) -> Any:
        return self._call("expire", [key, ttl])

    ttl = _fast_method("ttl")

    # -- sets --
    def sadd(self, key: Any, *members: Any) -> Any:
        return self._call("sadd", [key, _values(members)])

    def srem(self, key: Any, *members: Any) -> Any:
        return self._call("srem", [key, _values(members)])

    sismember = _fast_method("sismember")

    def smismember(self, key: Any, members: Any) -> Any:
        if type(members) is tuple:
            members = list(members)
        if type(members) is list and not members:
            # Nothing to ask: answer without a round trip (the key is still checked).
            try:
                kvops.check_key(key, self._st.budgets.kv_key_bytes)
            except PortKVError as e:
                raise KVError(str(e)) from None
            return []
        return self._call("smismember", [key, members])

    smembers = _fast_method("smembers")

    scard = _fast_method("scard")

    # -- hashes --
    hget = _fast_method("hget")

    def hset(self, key: Any, field_or_mapping: Any, value: Any = None) -> Any:
        if type(field_or_mapping) is dict:
            if value is not None:
                raise KVError("kv.hset: pass either (field, value) or one mapping")
            return self._call("hset", [key, field_or_mapping])
        if value is None:
            raise KVError("kv.hset: missing value")
        return self._call("hset", [key, {field_or_mapping: value}] if _hashable(field_or_mapping) else [key, None])

    def hdel(self, key: Any, *fields: Any) -> Any:
        return self._call("hdel", [key, _values(fields)])

    hgetall = _fast_method("hgetall")

    def hincrby(self, key: Any, field: Any, by: Any = 1) -> Any:
        return self._call("hincrby", [key, field, by])

    # -- lists --
    def lpush(self, key: Any, *values: Any) -> Any:
        return self._call("lpush", [key, _values(values)])

    def rpush(self, key: Any, *values: Any) -> Any:
        return self._call("rpush", [key, _values(values)])

    def lrange(self, key: Any, start: Any, stop: Any) -> Any:
        return self._call("lrange", [key, start, stop])

    def ltrim(self, key: Any, start: Any, stop: Any) -> Any:
        return self._call("ltrim", [key, start, stop])

    llen = _fast_method("llen")


def _hashable(x: Any) -> bool:
    return type(x) in (str, int, float, bool)


# ``kv.<op>("constant key", ...)`` compiled by the policy (``sandbox.policy.KV_CONST_KEY``):
# the same methods, minus the key checks the policy already made on the constant.
CONST_KEY_METHODS: dict[str, Any] = {name: _fast_method(name, key_is_valid=True) for name in _KEY_OPS | _KEY_VALUE_OPS}
