"""The script's ``kv`` object: exactly the operations in ``sandbox.kvops.OPS``, nothing else.

Each method packs its arguments into the wire form, checks them with ``kvops.validate``
(so a bad key fails at the script's own line with a clear message), counts the op against
``budgets.kv_ops``, calls ``port.call`` and converts the plain JSON answer into what the
script expects (``smembers`` -> set, ``smismember`` -> list of bool...). Ops taking just a
key, or a key and one value, call ``validate``'s own per-argument checks directly
(same checks, same order, same messages, without the generic dispatch).

There is one ``KV`` per process (``sandbox.runtime``): it reads the call's port from the
``RunState``, which holds it only while a call runs.

Failures:
- a refused operation (validation or the store's ``KVError``) raises the script-visible
  ``KVError`` (an ``Exception``: scripts may catch it, e.g. for a wrong key type);
- ``KVUnavailable`` (or anything unexpected from the port) stops the script for good with
  error kind ``unavailable``: a script must not carry on as if it had an answer.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from sandbox import kvops
from sandbox.api import KVError as PortKVError
from sandbox.api import KVUnavailable, bounded
from sandbox.budget import CLOCK_EVERY, BackendUnavailable, RunState, Stop
from sandbox.convert import scrub

# Python frames granted to the port on top of wherever the script's stack is, so a script
# that recursed to the interpreter's limit cannot make RecursionError fire half-way
# through the port's I/O.
PORT_STACK_HEADROOM = 300


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
assert {"get", "delete", "exists", "ttl", "smembers", "scard", "hgetall", "llen"} <= _KEY_OPS
assert {"sismember", "hget"} <= _KEY_VALUE_OPS
assert all(kvops._LABELS[name]["value"] == label for name, label in _VALUE_LABEL.items())
_check_key = kvops.check_key
_check_value = kvops._scalar
_getrecursionlimit = sys.getrecursionlimit
_monotonic_ns = time.monotonic_ns
_NO_VALUE: Any = object()
_setrecursionlimit = sys.setrecursionlimit


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
        return self._op(name, args, None, _NO_VALUE)

    def _op(self, name: str, args: list[Any] | None, key: Any, value: Any) -> Any:
        """One KV operation: check, count, call the port, check the answer.

        ``args`` is the op's argument list for ``kvops.validate``; ``None`` means a
        (key,) or (key, value) op (``value`` is ``_NO_VALUE`` for key-only ops), checked
        here with the same per-argument functions, the key first. The fast checks accept
        only what ``kvops.check_key`` / ``kvops._scalar`` return unchanged (an exact str,
        ASCII so bytes == characters and no surrogates, within the limit; keys non-empty
        and printable, which for ASCII means no control characters); anything else goes
        through those functions for the full check and their messages.
        """
        st = self._st
        if st.dead is not None:
            st.reraise()
        b = st.budgets
        if args is not None:
            try:
                _op, wire = kvops.validate(name, args, b.kv_key_bytes, b.kv_value_bytes)
            except PortKVError as e:
                raise KVError(str(e)) from None
        else:
            limit = b.kv_key_bytes
            if not (type(key) is str and key.isascii() and 0 < len(key) <= limit and key.isprintable()):
                try:
                    key = _check_key(key, limit)
                except PortKVError as e:
                    raise KVError(str(e)) from None
            if value is _NO_VALUE:
                wire = [key]
            else:
                limit = b.kv_value_bytes
                if not (type(value) is str and len(value) <= limit and value.isascii()):
                    try:
                        value = _check_value(value, _VALUE_LABEL[name], limit)
                    except PortKVError as e:
                        raise KVError(str(e)) from None
                wire = [key, value]
        if st.kv_ops >= b.kv_ops:
            st.exceeded("kv_ops", b.kv_ops)
        st.kv_ops += 1
        port = st.port
        limit = _getrecursionlimit()
        _setrecursionlimit(limit + PORT_STACK_HEADROOM)
        try:
            result = port.call(name, wire)
        except PortKVError as e:
            raise KVError(bounded(scrub(str(e)), 300)) from None
        except KVUnavailable:
            st.stop(BackendUnavailable(f"KV backend unavailable (kv.{name})"))
        except Stop:
            raise
        except Exception as e:  # a broken port must not look like an answer
            st.stop(BackendUnavailable(f"KV backend failed (kv.{name}: {type(e).__name__})"))
        finally:
            _setrecursionlimit(limit)
        # st.check_clock(), inlined: the round trip may have taken a while
        if st.dead is not None:
            st.reraise()
        st.ticks_left = CLOCK_EVERY
        if _monotonic_ns() > st.deadline:
            st.exceeded("wall_ms", b.wall_ms)
        if (result is True or result is False) and name in _BOOL_OPS:
            return result  # the common answer of sismember/exists/expire: already what bool() gives
        check, convert = _RESULTS[name]
        if not check(result):
            st.stop(BackendUnavailable(f"KV backend returned malformed data (kv.{name})"))
        if type(result) is list or type(result) is dict:
            st.charge(len(result))
        return result if convert is None else convert(result)

    # -- strings --
    def get(self, key: Any) -> Any:
        return self._op("get", None, key, _NO_VALUE)

    def set(self, key: Any, value: Any, ttl: Any = None) -> Any:
        return self._call("set", [key, value, ttl])

    def delete(self, key: Any) -> Any:
        return self._op("delete", None, key, _NO_VALUE)

    def exists(self, key: Any) -> Any:
        return self._op("exists", None, key, _NO_VALUE)

    def incr(self, key: Any, by: Any = 1, ttl: Any = None) -> Any:
        return self._call("incr", [key, by, ttl])

    def expire(self, key: Any, ttl: Any) -> Any:
        return self._call("expire", [key, ttl])

    def ttl(self, key: Any) -> Any:
        return self._op("ttl", None, key, _NO_VALUE)

    # -- sets --
    def sadd(self, key: Any, *members: Any) -> Any:
        return self._call("sadd", [key, _values(members)])

    def srem(self, key: Any, *members: Any) -> Any:
        return self._call("srem", [key, _values(members)])

    def sismember(self, key: Any, member: Any) -> Any:
        return self._op("sismember", None, key, member)

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

    def smembers(self, key: Any) -> Any:
        return self._op("smembers", None, key, _NO_VALUE)

    def scard(self, key: Any) -> Any:
        return self._op("scard", None, key, _NO_VALUE)

    # -- hashes --
    def hget(self, key: Any, field: Any) -> Any:
        return self._op("hget", None, key, field)

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

    def hgetall(self, key: Any) -> Any:
        return self._op("hgetall", None, key, _NO_VALUE)

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

    def llen(self, key: Any) -> Any:
        return self._op("llen", None, key, _NO_VALUE)


def _hashable(x: Any) -> bool:
    return type(x) in (str, int, float, bool)
