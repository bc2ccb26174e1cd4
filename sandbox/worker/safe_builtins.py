"""The builtins a script sees: a short, hand-checked list, wrapped where CPython would
iterate, allocate or stringify without our limits.

``str``, ``list``, ``dict``, ``set`` and ``tuple`` are ``SafeType`` callables rather than the
real classes (the classes' own attributes such as ``str.format`` or ``dict.fromkeys`` would
bypass the per-instance allow-list); ``isinstance`` maps them back to the real types.
``int`` is a ``SafeType`` too: ``int(text, base)`` bounds the bits before converting
(CPython caps only non-power-of-two bases, at 4300 digits). ``float`` and ``bool`` are the
real classes: attribute access on any class is refused by ``_getattr_``.
"""

from __future__ import annotations

import builtins
import math
import types
from collections.abc import Callable
from typing import Any

from sandbox.policy import CLASS_DUNDERS
from sandbox.worker.budget import RunState
from sandbox.worker.containers import (
    INTLIKE,
    SIZED,
    ScriptClass,
    charge_int_sum,
    check_collisions,
    check_division,
    check_pairs_depth,
    check_tuple_depth,
    dict_from_pairs,
    extreme_item,
    materialize,
    sort_items,
)
from sandbox.worker.kvapi import KVError
from sandbox.worker.methods import check_encoding, text_of

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
_LOG2_10 = math.log2(10)


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


_EXCEPTION_BASES = frozenset(EXCEPTIONS.values())
_CLASS_NAMESPACE = frozenset({"__module__", "__qualname__", "__doc__", *CLASS_DUNDERS})
_REAL_CLASSES = frozenset({int, float, bool, *EXCEPTIONS.values()})


def _real_types(classinfo: Any, depth: int = 0) -> Any:
    if type(classinfo) is SafeType:
        return classinfo._real
    if type(classinfo) is tuple and depth < 4 and len(classinfo) <= 32:
        return tuple(_real_types(c, depth + 1) for c in classinfo)
    if classinfo in _REAL_CLASSES or type(classinfo) is ScriptClass:
        return classinfo
    raise TypeError("isinstance() arg 2 must be a type or tuple of types")


def make_builtins(st: RunState) -> dict[str, Any]:
    """The builtins table, bound to ``st``. Built once per process by ``sandbox.worker.runtime``
    (``st`` is reset for every call): read budgets from ``st`` when called, never here.

    Each wrapped builtin is made by its own factory below (``_sorted(st)`` makes ``sorted``).
    The functions keep the names and signatures they always had: scripts see them in
    TypeErrors ("sorted() missing 1 required positional argument: 'iterable'", "int_() takes
    from 0 to 2 positional arguments ...", the qualname scrubbed to its last part).
    """
    out: dict[str, Any] = {
        "None": None,
        "True": True,
        "False": False,
        "len": len,
        "abs": abs,
        "chr": chr,
        "ord": ord,
        "hex": hex,
        "divmod": _divmod(st),
        "int": SafeType("int", int, _int(st)),
        "float": float,
        "bool": bool,
        "str": SafeType("str", str, _str(st)),
        "list": SafeType("list", list, _list(st)),
        "tuple": SafeType("tuple", tuple, _tuple(st)),
        "set": SafeType("set", set, _set(st)),
        "dict": SafeType("dict", dict, _dict(st)),
        "repr": _repr(st),
        "sorted": _sorted(st),
        "reversed": _reversed(st),
        "enumerate": _enumerate(st),
        "zip": _zip(st),
        "range": _range(st),
        "min": _extreme(st, min),
        "max": _extreme(st, max),
        "sum": _sum(st),
        "any": _any(st),
        "all": _all(st),
        "isinstance": _isinstance(st),
        "round": _round(st),
    }
    for name, value in out.items():
        if type(value) is types.FunctionType:  # show "sorted", not "sorted_", in messages
            value.__name__ = value.__qualname__ = name
    out.update(EXCEPTIONS)
    out["__metaclass__"] = _class_maker(st)
    out["__build_class__"] = builtins.__build_class__  # runs the body, then make_class
    return out


# -- the types: str, int, list, tuple, set, dict ------------------------------------------


def _str(st: RunState) -> Callable[..., str]:
    def str_(obj: Any = "", encoding: Any = _MISSING, errors: Any = "strict") -> str:
        if encoding is _MISSING:
            return text_of(st, obj)
        if type(obj) is not bytes:
            raise TypeError("decoding to str needs a bytes object")
        check_encoding(encoding, errors)
        r = obj.decode(encoding, errors)
        st.check_str(len(r))
        return r

    return str_


def _int(st: RunState) -> Callable[..., int]:
    def int_(x: Any = 0, base: Any = _MISSING) -> int:
        # Text in a power-of-two base converts in linear time, so CPython does not cap its
        # length (4300 digits is for the other bases): bound the bits before converting.
        tx = type(x)
        if tx is str or tx is bytes:
            if base is _MISSING:
                per_digit = _LOG2_10
            elif type(base) in INTLIKE and 2 <= base <= 36:
                per_digit = math.log2(base)
            else:
                per_digit = 4.0  # base 0: a 0x/0o/0b prefix or decimal
            if len(x) * per_digit > st.max_bits and len(x.strip()) * per_digit > st.max_bits + 4:
                st.check_bits(len(x.strip()) * per_digit)
            return int(x) if base is _MISSING else int(x, base)
        r = int(x) if base is _MISSING else int(x, base)
        if not st.neg_int_limit < r < st.int_limit:
            st.check_bits(r.bit_length())
        return r

    return int_


def _list(st: RunState) -> Callable[..., list[Any]]:
    def list_(iterable: Any = ()) -> list[Any]:
        r = list(materialize(st, iterable))
        st.check_items(len(r))
        return r

    return list_


def _tuple(st: RunState) -> Callable[..., tuple[Any, ...]]:
    def tuple_(iterable: Any = ()) -> tuple[Any, ...]:
        r = tuple(materialize(st, iterable))
        st.check_items(len(r))
        return check_tuple_depth(st, r)

    return tuple_


def _set(st: RunState) -> Callable[..., set[Any]]:
    def set_(iterable: Any = ()) -> set[Any]:
        items = materialize(st, iterable)
        if type(items) is not set and type(items) is not frozenset:  # a set is copied without comparing
            check_collisions(st, items)
        r = set(items)
        st.check_items(len(r))
        return r

    return set_


def _dict(st: RunState) -> Callable[..., dict[Any, Any]]:
    def dict_(*args: Any, **kwargs: Any) -> dict[Any, Any]:
        if len(args) > 1:
            raise TypeError(f"dict expected at most 1 argument, got {len(args)}")
        r = dict_from_pairs(st, materialize(st, args[0])) if args else {}
        r.update(kwargs)
        st.check_items(len(r))
        return r

    return dict_


# -- functions ------------------------------------------------------------------------------


def _divmod(st: RunState) -> Callable[..., Any]:
    def divmod_(a: Any, b: Any) -> Any:
        if type(a) in INTLIKE and type(b) in INTLIKE:
            check_division(st, a, b)
        return divmod(a, b)

    return divmod_


def _repr(st: RunState) -> Callable[..., str]:
    def repr_(obj: Any) -> str:
        return text_of(st, obj, as_repr=True)

    return repr_


def _sorted(st: RunState) -> Callable[..., list[Any]]:
    def sorted_(iterable: Any, *, key: Any = None, reverse: Any = False) -> list[Any]:
        r = sort_items(st, materialize(st, iterable), key, reverse)
        st.check_items(len(r))
        return r

    return sorted_


def _reversed(st: RunState) -> Callable[..., list[Any]]:
    def reversed_(seq: Any) -> list[Any]:
        if type(seq) not in SIZED or type(seq) in (set, frozenset):
            raise TypeError(f"'{type(seq).__name__}' object is not reversible")
        st.charge(len(seq))
        return list(reversed(seq))

    return reversed_


# enumerate() and zip() return lists of new tuples (not lazy iterators), so each
# tuple's nesting depth is checked once, here.
def _enumerate(st: RunState) -> Callable[..., list[tuple[int, Any]]]:
    def enumerate_(iterable: Any, start: Any = 0) -> list[tuple[int, Any]]:
        items = materialize(st, iterable)
        pairs = list(enumerate(items, start))
        if tuple in map(type, items):
            check_pairs_depth(st, pairs)
        return pairs

    return enumerate_


def _zip(st: RunState) -> Callable[..., list[tuple[Any, ...]]]:
    def zip_(*iterables: Any, strict: Any = False) -> list[tuple[Any, ...]]:
        inputs = [materialize(st, it) for it in iterables]
        rows = list(zip(*inputs, strict=strict))
        st.charge(len(rows))
        if any(tuple in map(type, items) for items in inputs):
            check_pairs_depth(st, rows)
        return rows

    return zip_


def _range(st: RunState) -> Callable[..., range]:
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

    return range_


def _extreme(st: RunState, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``min`` or ``max`` (``fn``)."""

    def extreme(*args: Any, key: Any = None, default: Any = _MISSING) -> Any:
        if not args:
            raise TypeError(f"{fn.__name__} expected at least 1 argument, got 0")
        items = materialize(st, args[0]) if len(args) == 1 else args
        if not items:
            if default is _MISSING:
                raise ValueError(f"{fn.__name__}() arg is an empty sequence")
            return default
        return extreme_item(st, fn, items, key)

    return extreme


def _sum(st: RunState) -> Callable[..., Any]:
    def sum_(iterable: Any, start: Any = 0) -> Any:
        if type(start) not in (int, float, bool):
            raise TypeError("sum() start must be a number (join strings with ''.join, lists with +)")
        items = materialize(st, iterable)
        charge_int_sum(st, items)
        return sum(items, start)

    return sum_


def _any(st: RunState) -> Callable[..., bool]:
    def any_(iterable: Any) -> bool:
        return any(materialize(st, iterable) if type(iterable) in SIZED else _lazy(st, iterable))

    return any_


def _all(st: RunState) -> Callable[..., bool]:
    def all_(iterable: Any) -> bool:
        return all(materialize(st, iterable) if type(iterable) in SIZED else _lazy(st, iterable))

    return all_


def _lazy(st: RunState, iterable: Any) -> Any:
    # Short-circuiting over a generator expression: it guards its own loop.
    if type(iterable) is not types.GeneratorType:
        return materialize(st, iterable)
    st.alive()
    return iterable


def _isinstance(st: RunState) -> Callable[..., bool]:
    def isinstance_(obj: Any, classinfo: Any) -> bool:
        return isinstance(obj, _real_types(classinfo))

    return isinstance_


def _round(st: RunState) -> Callable[..., Any]:
    def round_(number: Any, ndigits: Any = None) -> Any:
        if type(number) in INTLIKE and type(ndigits) in INTLIKE and ndigits < 0:
            # round(x, -n) computes 10**n: beyond the int size limit the answer is 0.
            if -ndigits > st.max_bits // 3 + 10:
                return 0
        return round(number, ndigits)

    return round_


# -- classes ----------------------------------------------------------------------------------


def _class_maker(st: RunState) -> Callable[..., ScriptClass]:
    def make_class(name: str, bases: tuple[Any, ...], ns: dict[str, Any]) -> ScriptClass:
        # `class C(...)` is compiled to `class C(..., metaclass=__metaclass__)`: this.
        st.step()
        for base in bases:
            if type(base) is not ScriptClass and base not in _EXCEPTION_BASES:
                raise TypeError(
                    "a class can only derive from the script's own classes or an exception class (Exception...)"
                )
        for key in ns:
            if key.startswith("_"):
                if key not in _CLASS_NAMESPACE:
                    st.refuse(f"class attribute '{key}' is not allowed")
                continue
            _check_not_inherited(key, bases)
        return ScriptClass(name, bases, dict(ns))

    return make_class


def _check_not_inherited(key: str, bases: tuple[Any, ...]) -> None:
    for base in bases:
        for k in base.__mro__:
            if type(k) is not ScriptClass and k is not object and hasattr(k, key):
                # host code reads e.args etc.: a class must not redefine them
                raise TypeError(f"class attribute '{key}' would replace {k.__name__}.{key}")
