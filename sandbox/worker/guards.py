"""The guard functions RestrictedPython's rewritten code calls, written for this sandbox.

``make_hooks(st, ...)`` returns the hook table: ``sandbox.worker.runtime`` builds it once per
process, bound to the process's one ``RunState`` (reset at the start of every call), so the
hooks read budgets from ``st`` at call time, never from values captured when they were made.
Each hook is one method of ``Hooks``, named after the builtin it is installed as.
Principles:

- Attribute access is an allow-list per *exact* type (``sandbox.worker.methods``). Methods that
  can build something big, or that iterate their argument in C, are replaced by wrappers
  that check the size *before* building and charge the items as steps.
- Iteration charges ``len()`` steps up front for sized built-in containers; the only unsized
  iterables a script can get are its own generator expressions, whose loops are guarded
  (``sandbox.worker.containers``).
- Every hook first checks ``st.dead`` so a stopped script cannot do anything else.
"""

from __future__ import annotations

import itertools
import math
import operator
import sys
from collections.abc import Callable
from typing import Any

from sandbox.worker.budget import CLOCK_EVERY, BudgetExceeded, RunState
from sandbox.worker.containers import (
    INTLIKE,
    LAZY,
    PLAIN_DATA,
    SIZED,
    ScriptClass,
    check_collisions,
    check_division,
    check_tuple_depth,
    describe,
    materialize,
    not_iterable,
    script_attr,
)
from sandbox.worker.convert import exception_args
from sandbox.worker.formatting import format_field, percent_format
from sandbox.worker.methods import Factory, text_of

SUBSCRIPTABLE = frozenset({dict, list, tuple, str, bytes, range})
# Operands of set algebra (`|`, `&`, `-`, `^`): hash tables and their key/item views.
HASHED = frozenset({set, frozenset, dict, type({}.keys()), type({}.items())})
_chain, _islice, _repeat, _map = itertools.chain.from_iterable, itertools.islice, itertools.repeat, map
WRITABLE = frozenset({dict, list, set})

_exception = sys.exception
_CONVERSION_CHARS = {-1: None, 115: "s", 114: "r", 97: "a"}


# -- the hooks ---------------------------------------------------------------------------------


class Hooks:
    """The guard hooks of one ``RunState``: one method per name the policy's rewritten code
    calls (``getattr_`` is installed as ``_getattr_``), in the spirit of RestrictedPython's
    one visitor per node. Each method reads ``st`` once into a local (the reads after that
    cost what a closure cell read cost). Nothing budget-dependent is kept: the hooks read
    budgets from ``st`` at call time, since they outlive one call."""

    __slots__ = ("attrs", "print_collector", "st", "subscriptable")

    def __init__(
        self,
        st: RunState,
        attrs: dict[type, dict[str, Factory | None]],
        subscriptable: frozenset[type],
        print_collector: Callable[[RunState], Any],
    ) -> None:
        self.st = st
        self.attrs = attrs
        self.subscriptable = subscriptable
        self.print_collector = print_collector

    def table(self) -> dict[str, Any]:
        """builtins name -> hook."""
        st = self.st
        return {
            "_getattr_": self.getattr_,
            "_getitem_": self.getitem_,
            "_getiter_": self.getiter_,
            "_getiter_item_": self.getiter_item_,
            "_iter_unpack_sequence_": self.iter_unpack_sequence_,
            "_unpack_sequence_": self.unpack_sequence_,
            "_write_": self.write_,
            "_apply_": self.apply_,
            "_inplacevar_": self.inplacevar_,
            "_print_": self.print_,
            "_sized_": self.sized_,
            "_nest_": self.nest_,
            "_add_": self.add_,
            "_iadd_": self.iadd_,
            "_imul_": self.imul_,
            "_mul_": self.mul_,
            "_pow_": self.pow_,
            "_lshift_": self.lshift_,
            "_mod_": self.mod_,
            "_floordiv_": self.floordiv_,
            "_fmt_": self.fmt_,
            "_caught_": self.caught_,
            "_sub_": self.set_algebra(operator.sub),
            "_or_": self.set_algebra(operator.or_),
            "_and_": self.set_algebra(operator.and_),
            "_xor_": self.set_algebra(operator.xor),
            "_isub_": self.set_algebra(operator.isub),  # in place for sets, like native `-=`
            "_ior_": self.set_algebra(operator.ior),
            "_iand_": self.set_algebra(operator.iand),
            "_ixor_": self.set_algebra(operator.ixor),
            "_step_": st.step,
            "_tick_": st.tick,
            "_enter_": st.enter,
            "_leave_": st.leave,
        }

    def getattr_(self, obj: Any, name: str) -> Any:
        st = self.st
        # Hot path first: an allowed plain method of an allowed type, script not stopped.
        # (RestrictedPython only ever passes constant str names; a script cannot call this.)
        how = self.attrs.get(type(obj), _NO_ATTRS).get(name, _MISSING)
        if how is None and st.dead is None:
            st.ticks_left -= 1  # counts as a loop tick (see policy._TICKING_GUARDS)
            if st.ticks_left <= 0:
                st.check_clock()
            return getattr(obj, name)
        return self.getattr_slow(obj, name, how)

    def getattr_slow(self, obj: Any, name: Any, how: Any) -> Any:
        st = self.st
        st.tick()
        if how is not _MISSING:
            return how(st, obj)
        t = type(obj)
        if isinstance(obj, BaseException) and name == "args":
            return exception_args(obj)
        if type(t) is ScriptClass or t is ScriptClass:
            return script_attr(obj, name)
        if t in PLAIN_DATA and type(name) is str and not hasattr(t, name):
            # A typo or a None where a dict was expected: the ordinary, catchable error.
            raise AttributeError(f"'{t.__name__}' object has no attribute '{name}'")
        st.refuse(f"attribute '{name}' of {describe(obj)} is not available")

    def getitem_(self, obj: Any, key: Any) -> Any:
        st = self.st
        st.ticks_left -= 1
        if st.ticks_left <= 0:  # or stopped (budget.STOPPED_TICKS)
            st.check_clock()
        if type(obj) in self.subscriptable:
            return obj[key]
        st.refuse(f"{describe(obj)} cannot be indexed")

    def getiter_(self, obj: Any, ticks_here: bool = False) -> Any:
        st = self.st
        # ticks_here: the policy found that the loop runs no call per item (no guard, no
        # function: nothing can change the container or do unbounded work but C-level
        # operators), so it put no _tick_() in it: the loop's ticks are taken here.
        t = type(obj)
        if t in SIZED:
            n = len(obj)
            st.charge(n)
            return self.chunked(obj, n) if ticks_here else obj
        if t in LAZY:
            st.alive()
            return obj
        not_iterable(st, obj)

    def chunked(self, obj: Any, n: int) -> Any:
        """A call-free loop's ticks: up to CLOCK_EVERY items at once, now; beyond that one
        clock check per CLOCK_EVERY items, called from C between chunks (nothing can change
        the container while such a loop runs, so its length is known)."""
        st = self.st
        if n < CLOCK_EVERY:
            st.ticks_left -= n
            if st.ticks_left <= 0:  # a clock check is due, or the script is stopped
                st.check_clock()
            return obj
        # (both callers have checked for a stop; the first chunk reads the clock)
        return _chain(_map(self.next_chunk, _repeat(iter(obj), -(-n // CLOCK_EVERY))))

    def next_chunk(self, it: Any) -> Any:
        st = self.st
        st.check_clock()
        return _islice(it, CLOCK_EVERY)

    def getiter_item_(self, obj: Any, key: Any, ticks_here: bool = False) -> Any:
        st = self.st
        # self.getiter_(self.getitem_(obj, key), ticks_here) in one call (`for x in req["items"]`),
        # written out: this is the hot path. Its ticks (getitem_'s, getiter_'s, and with
        # ticks_here the loop's) are counted once, after the steps.
        if st.dead is not None:
            st.reraise()
        if type(obj) not in self.subscriptable:
            st.refuse(f"{describe(obj)} cannot be indexed")
        value = obj[key]
        if type(value) not in SIZED:
            st.tick()  # getitem_'s
            return self.getiter_(value, ticks_here)
        n = len(value)
        st.steps_left -= n
        if ticks_here:
            if n >= CLOCK_EVERY:
                st.ticks_left -= 2
                if st.ticks_left <= 0 or st.steps_left < 0 or n >= 1024:
                    st._slow_step()
                return self.chunked(value, n)  # a clock check per chunk
            st.ticks_left -= n + 2
        else:
            st.ticks_left -= 2
        # a big batch stands for real work: read the clock
        if st.ticks_left <= 0 or st.steps_left < 0 or n >= 1024:
            st._slow_step()
        return value

    def unpack_sequence_(self, it: Any, spec: Any, _getiter: Any) -> Any:
        # Native unpacking stops after len(targets)+1 items (or collects a starred target
        # from a sized / self-charging iterable), so no list() of the whole thing here.
        return self.getiter_(it)

    def iter_unpack_sequence_(self, it: Any, spec: Any, _getiter: Any) -> Any:
        return self.getiter_(it)

    def write_(self, obj: Any) -> Any:
        st = self.st
        st.ticks_left -= 1
        if st.ticks_left <= 0:  # or stopped (budget.STOPPED_TICKS)
            st.check_clock()
        if type(obj) in WRITABLE or type(type(obj)) is ScriptClass:  # (not a class itself)
            return obj
        st.refuse(f"{describe(obj)} cannot be modified")

    def apply_(self, /, func: Any, *args: Any, **kwargs: Any) -> Any:
        # `self` positional-only: a script's own keyword named "self" passes through, as before
        st = self.st
        for key in kwargs:
            if key.startswith("_"):
                st.refuse(f'keyword argument "{key}" is not allowed')
        st.charge(len(args) + len(kwargs))
        return func(*args, **kwargs)

    def nest_(self, t: tuple[Any, ...]) -> tuple[Any, ...]:
        st = self.st
        return check_tuple_depth(st, t)

    def sized_(self, container: Any) -> Any:
        st = self.st
        if len(container) > st.max_items:
            st.check_items(len(container))
        return container

    # -- growth operators: check before allocating --

    def add_(self, a: Any, b: Any) -> Any:
        st = self.st
        ta = type(a)
        if ta is int and type(b) is int:
            r = a + b
            if st.neg_int_limit < r < st.int_limit:
                return r
            st.check_bits(r.bit_length())
            return r
        if ta is str and type(b) is str:
            if len(a) + len(b) > st.max_str:
                st.check_str(len(a) + len(b))
            return a + b
        if (ta is list or ta is tuple) and type(b) is ta:
            st.check_items(len(a) + len(b))
            st.charge(len(b))
        elif ta is bytes and type(b) is bytes:
            st.check_bytes(len(a) + len(b))
        return a + b

    def mul_(self, a: Any, b: Any) -> Any:
        st = self.st
        ta, tb = type(a), type(b)
        if ta in INTLIKE and tb in INTLIKE:
            if a and b and a.bit_length() + b.bit_length() > st.max_bits:
                st.check_bits(a.bit_length() + b.bit_length())
            return a * b
        if tb in INTLIKE:
            seq, n = a, b
        elif ta in INTLIKE:
            seq, n = b, a
        else:
            return a * b
        ts = type(seq)
        if n > 0 and ts in (str, list, tuple, bytes):
            size = len(seq) * n
            if ts is str:
                st.check_str(size)
            elif ts is bytes:
                st.check_bytes(size)
            else:
                st.check_items(size)
                st.charge(size)
        return a * b

    def pow_(self, a: Any, b: Any) -> Any:
        st = self.st
        if type(a) in INTLIKE and type(b) in INTLIKE and b > 1 and (a > 1 or a < -1):
            # |a| >= 2, so the result has at least b bits: compare b first (no float overflow).
            st.check_bits(b if b > st.max_bits else math.log2(abs(a)) * b)
        return a**b

    def lshift_(self, a: Any, b: Any) -> Any:
        st = self.st
        if type(a) in INTLIKE and type(b) in INTLIKE and a and b > 0:
            st.check_bits(a.bit_length() + b)
        return a << b

    def mod_(self, a: Any, b: Any) -> Any:
        st = self.st
        ta = type(a)
        if ta is str:
            return percent_format(st, a, b)
        if ta is bytes:
            raise TypeError("bytes %-formatting is not supported; format a str and encode it")
        if ta in INTLIKE and type(b) in INTLIKE:
            check_division(st, a, b)
        return a % b

    def floordiv_(self, a: Any, b: Any) -> Any:
        st = self.st
        if type(a) in INTLIKE and type(b) in INTLIKE:
            check_division(st, a, b)
        return a // b

    def fmt_(self, value: Any, conversion: int, spec: Any) -> str:
        st = self.st
        # An f-string field: conversion is -1 (none) or ord('s'/'r'/'a').
        return format_field(st, value, _CONVERSION_CHARS[conversion], spec, text_of)

    def iadd_(self, x: Any, y: Any) -> Any:
        st = self.st
        if type(x) is int and type(y) is int:  # the loop-counter case, inlined
            r = x + y
            if st.neg_int_limit < r < st.int_limit:
                return r
            st.check_bits(r.bit_length())
            return r
        if type(x) is list:  # in place, like native `+=` (aliases see the change)
            items = materialize(st, y)
            st.check_items(len(x) + len(items))
            x += items
            return x
        return self.add_(x, y)

    def imul_(self, x: Any, y: Any) -> Any:
        st = self.st
        if type(x) is list and type(y) in INTLIKE:
            st.check_items(len(x) * max(y, 0))
            st.charge(len(x) * max(y, 0))
            x *= y
            return x
        return self.mul_(x, y)

    def inplacevar_(self, op: str, x: Any, y: Any) -> Any:
        st = self.st
        # Only reached if the policy left an augmented assignment to RestrictedPython.
        if op == "+=":
            return self.iadd_(x, y)
        if op == "*=":
            return self.imul_(x, y)
        if op == "**=":
            return self.pow_(x, y)
        if op == "<<=":
            return self.lshift_(x, y)
        if op == "%=":
            return self.mod_(x, y)
        if op == "//=":
            return self.floordiv_(x, y)
        if op in _SET_INPLACE:
            if type(x) in HASHED and type(y) in HASHED:
                check_collisions(st, x, y)
        fallback = _INPLACE_FALLBACK.get(op)
        if fallback is None:
            st.refuse(f"operator {op} is not supported")
        return fallback(x, y)

    def set_algebra(self, op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """The hook of one set-algebra operator: the collision check first."""
        st = self.st

        def hook(a: Any, b: Any) -> Any:
            if type(a) in HASHED and type(b) in HASHED:
                check_collisions(st, a, b)
            return op(a, b)

        return hook

    def caught_(self) -> None:
        st = self.st
        # First statement of every `except` block: the exception being handled.
        if st.dead is not None:
            st.reraise()  # a `finally:` replaced a stop with an ordinary exception
        if type(_exception()) is MemoryError:
            st.stop(BudgetExceeded("budget exceeded: memory (the script allocated too much)"))

    def print_(self, _getattr: Any) -> Any:
        st = self.st
        return self.print_collector(st)


def make_hooks(
    st: RunState,
    attrs: dict[type, dict[str, Factory | None]],
    subscriptable: frozenset[type],
    print_collector: Callable[[RunState], Any],
) -> dict[str, Any]:
    """The hook table for ``st`` (``sandbox.worker.runtime`` builds one per thread)."""
    return Hooks(st, attrs, subscriptable, print_collector).table()


_MISSING = object()
_NO_ATTRS: dict[str, Factory | None] = {}


_SET_INPLACE = frozenset({"-=", "|=", "&=", "^="})
_INPLACE_FALLBACK: dict[str, Callable[[Any, Any], Any]] = {
    "-=": operator.isub,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    ">>=": operator.irshift,
    "&=": operator.iand,
    "|=": operator.ior,
    "^=": operator.ixor,
}
