"""The builtins a script sees: a short, hand-checked list, wrapped where CPython would
iterate, allocate or stringify without our limits.

``str``, ``list``, ``dict``, ``set`` and ``tuple`` are ``SafeType`` callables rather than the
real classes (the classes' own attributes such as ``str.format`` or ``dict.fromkeys`` would
bypass the per-instance allow-list); ``isinstance`` maps them back to the real types.
``int``, ``float`` and ``bool`` are the real classes: attribute access on any class is
refused by ``_getattr_``, and their constructors are bounded (``int()`` from text is
capped at 4300 digits by CPython).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from sandbox.budget import RunState
from sandbox.containers import (
    INTLIKE,
    SIZED,
    check_collisions,
    check_pairs_depth,
    check_tuple_depth,
    dict_from_pairs,
    materialize,
)
from sandbox.kvapi import KVError
from sandbox.methods import check_encoding, text_of

# Script-visible exception classes. All derive from Exception: a script can raise and
# catch these, never the BaseException-derived stops used for budgets and policy.
EXCEPTIONS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        Exception, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError, ArithmeticError,
        LookupError, RuntimeError, AssertionError, AttributeError,
    )
}  # fmt: skip
EXCEPTIONS["KVError"] = KVError

_MISSING: Any = object()


class SafeType:
    """A builtin type as the script sees it: callable, usable in isinstance, no attributes."""

    __slots__ = ("_make", "_name", "_real")
    PUBLIC: frozenset[str] = frozenset()

    def __init__(self, name: str, real: type, make: Callable[..., Any]) -> None:
        self._name = name
        self._real = real
        self._make = make

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._make(*args, **kwargs)

    def script_repr(self) -> str:
        return f"<class '{self._name}'>"

    __repr__ = script_repr


_REAL_CLASSES = frozenset({int, float, bool, *EXCEPTIONS.values()})


def _real_types(classinfo: Any, depth: int = 0) -> Any:
    if type(classinfo) is SafeType:
        return classinfo._real
    if type(classinfo) is tuple and depth < 4 and len(classinfo) <= 32:
        return tuple(_real_types(c, depth + 1) for c in classinfo)
    if classinfo in _REAL_CLASSES:
        return classinfo
    raise TypeError("isinstance() arg 2 must be a type or tuple of types")


def make_builtins(st: RunState) -> dict[str, Any]:
    """The builtins table, bound to ``st``. Built once per process by ``sandbox.runtime``
    (``st`` is reset for every call): read budgets from ``st`` when called, never here."""

    def str_(obj: Any = "", encoding: Any = _MISSING, errors: Any = "strict") -> str:
        if encoding is _MISSING:
            return text_of(st, obj)
        if type(obj) is not bytes:
            raise TypeError("decoding to str needs a bytes object")
        check_encoding(encoding, errors)
        r = obj.decode(encoding, errors)
        st.check_str(len(r))
        return r

    def repr_(obj: Any) -> str:
        return text_of(st, obj, as_repr=True)

    def list_(iterable: Any = ()) -> list[Any]:
        r = list(materialize(st, iterable))
        st.check_items(len(r))
        return r

    def tuple_(iterable: Any = ()) -> tuple[Any, ...]:
        r = tuple(materialize(st, iterable))
        st.check_items(len(r))
        return check_tuple_depth(st, r)

    def set_(iterable: Any = ()) -> set[Any]:
        items = materialize(st, iterable)
        if type(items) not in (set, frozenset, dict):  # those keys are already unique
            check_collisions(st, items)
        r = set(items)
        st.check_items(len(r))
        return r

    def dict_(*args: Any, **kwargs: Any) -> dict[Any, Any]:
        if len(args) > 1:
            raise TypeError(f"dict expected at most 1 argument, got {len(args)}")
        r = dict_from_pairs(st, materialize(st, args[0])) if args else {}
        r.update(kwargs)
        st.check_items(len(r))
        return r

    def sorted_(iterable: Any, *, key: Any = None, reverse: Any = False) -> list[Any]:
        r = sorted(materialize(st, iterable), key=key, reverse=reverse)
        st.check_items(len(r))
        return r

    def reversed_(seq: Any) -> list[Any]:
        if type(seq) not in SIZED or type(seq) in (set, frozenset):
            raise TypeError(f"'{type(seq).__name__}' object is not reversible")
        st.charge(len(seq))
        return list(reversed(seq))

    # enumerate() and zip() return lists of new tuples (not lazy iterators), so each
    # tuple's nesting depth is checked once, here.
    def enumerate_(iterable: Any, start: Any = 0) -> list[tuple[int, Any]]:
        items = materialize(st, iterable)
        pairs = list(enumerate(items, start))
        if tuple in map(type, items):
            check_pairs_depth(st, pairs)
        return pairs

    def zip_(*iterables: Any, strict: Any = False) -> list[tuple[Any, ...]]:
        inputs = [materialize(st, it) for it in iterables]
        rows = list(zip(*inputs, strict=strict))
        st.charge(len(rows))
        if any(tuple in map(type, items) for items in inputs):
            check_pairs_depth(st, rows)
        return rows

    def range_(*args: Any) -> range:
        r = range(*args)
        max_items = st.max_items
        try:
            n = len(r)
        except OverflowError:
            n = max_items + 1
        if n > max_items:
            st.exceeded("max_items", max_items, f"range of {n} items")
        return r

    def _extreme(fn: Callable[..., Any]) -> Callable[..., Any]:
        def extreme(*args: Any, key: Any = None, default: Any = _MISSING) -> Any:
            if not args:
                raise TypeError(f"{fn.__name__} expected at least 1 argument, got 0")
            items = materialize(st, args[0]) if len(args) == 1 else args
            if default is _MISSING:
                return fn(items, key=key)
            return fn(items, key=key, default=default)

        return extreme

    def sum_(iterable: Any, start: Any = 0) -> Any:
        if type(start) not in (int, float, bool):
            raise TypeError("sum() start must be a number (join strings with ''.join, lists with +)")
        return sum(materialize(st, iterable), start)

    def any_(iterable: Any) -> bool:
        return any(materialize(st, iterable) if type(iterable) in SIZED else _lazy(iterable))

    def all_(iterable: Any) -> bool:
        return all(materialize(st, iterable) if type(iterable) in SIZED else _lazy(iterable))

    def _lazy(iterable: Any) -> Any:
        # Short-circuiting over a generator expression: it guards its own loop.
        if type(iterable) is not types.GeneratorType:
            return materialize(st, iterable)
        st.alive()
        return iterable

    def isinstance_(obj: Any, classinfo: Any) -> bool:
        return isinstance(obj, _real_types(classinfo))

    def round_(number: Any, ndigits: Any = None) -> Any:
        if type(number) in INTLIKE and type(ndigits) in INTLIKE and ndigits < 0:
            # round(x, -n) computes 10**n: beyond the int size limit the answer is 0.
            if -ndigits > st.max_bits // 3 + 10:
                return 0
        return round(number, ndigits)

    out: dict[str, Any] = {
        "None": None,
        "True": True,
        "False": False,
        "len": len,
        "abs": abs,
        "chr": chr,
        "ord": ord,
        "hex": hex,
        "divmod": divmod,
        "int": int,
        "float": float,
        "bool": bool,
        "str": SafeType("str", str, str_),
        "list": SafeType("list", list, list_),
        "tuple": SafeType("tuple", tuple, tuple_),
        "set": SafeType("set", set, set_),
        "dict": SafeType("dict", dict, dict_),
        "repr": repr_,
        "sorted": sorted_,
        "reversed": reversed_,
        "enumerate": enumerate_,
        "zip": zip_,
        "range": range_,
        "min": _extreme(min),
        "max": _extreme(max),
        "sum": sum_,
        "any": any_,
        "all": all_,
        "isinstance": isinstance_,
        "round": round_,
    }
    for name, value in out.items():
        if type(value) is types.FunctionType:  # show "sorted", not "sorted_", in messages
            value.__name__ = value.__qualname__ = name
    out.update(EXCEPTIONS)
    return out
