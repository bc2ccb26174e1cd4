"""The guard functions RestrictedPython's rewritten code calls, written for this sandbox.

``make_hooks(st)`` returns the hook table for one call; every hook closes over that call's
``RunState``. Principles:

- Attribute access is an allow-list per *exact* type (``ATTRS``). Methods that can build
  something big, or that iterate their argument in C, are replaced by wrappers that check
  the size *before* building and charge the items as steps.
- Iteration charges ``len()`` steps up front for sized built-in containers; the only unsized
  iterables a script can get are its own generator expressions (their loops are guarded)
  and ``enumerate``/``zip`` objects our wrappers built from already-charged inputs.
- Every hook first checks ``st.dead`` so a stopped script cannot do anything else.
"""

from __future__ import annotations

import codecs
import functools
import math
import operator
import random
import re
import types
from collections.abc import Callable
from typing import Any, NoReturn

from sandbox.budget import RunState
from sandbox.convert import (
    SafeText,
    TooLong,
    exception_args,
    safe_repr,
    safe_str,
    sanitize_format_arg,
)

INTLIKE = frozenset({int, bool})
# Built-in containers whose length is known: iterating them is charged len() steps at once.
SIZED = frozenset(
    {
        list, tuple, str, bytes, dict, set, frozenset, range,
        type({}.keys()), type({}.values()), type({}.items()),
    }
)  # fmt: skip
# The only unsized iterables a script can hold: its own generator expressions, whose own
# loops are guarded (zip/enumerate/reversed/items return charged lists).
LAZY = frozenset({types.GeneratorType})
SUBSCRIPTABLE = {dict, list, tuple, str, bytes, range}
PLAIN_DATA = frozenset({type(None), str, bytes, int, float, bool, complex, list, dict, set, frozenset, tuple, range})
COLLISION_CHECK_MIN = 2048  # below this, even all-colliding keys cost little (~2M comparisons)
COLLISION_SAMPLE = 1024
MAX_COLLISION_WORK = 20_000_000  # estimated key comparisons in one C call (~0.15 s)
HASH_MODULUS = 2**61 - 1  # sys.hash_info.modulus on 64-bit CPython
_random = random.Random()  # private instance: never shared with, or seeded by, scripts
WRITABLE = frozenset({dict, list, set})
ENCODINGS = frozenset({"utf-8", "utf8", "ascii", "latin-1", "latin1", "iso-8859-1", "utf-16", "utf-32"})
ERROR_MODES = frozenset({"strict", "ignore", "replace", "backslashreplace", "surrogatepass"})
for _name in ENCODINGS:  # import the codec modules now, before a worker confines itself
    codecs.lookup(_name)
# Tuples are the one hashable container a script can nest, and CPython hashes nested
# tuples recursively in C with no depth check: hashing a tuple nested ~1M deep segfaults
# the interpreter (measured on 3.11.7). Every place a script can build a tuple holding
# script values checks that no tuple gets deeper than this.
MAX_TUPLE_DEPTH = 100

_PERCENT_SPEC = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d+))?[hlL]?(?P<conv>.?)", re.S
)
_SPEC_NUMBER = re.compile(r"\d+")

Factory = Callable[[RunState, Any], Any]


# -- shared building blocks --------------------------------------------------------------


def materialize(st: RunState, x: Any) -> Any:
    """The items of ``x`` in a sized container, charged as steps, bounded by max_items.

    Sized built-ins are returned as they are (charged ``len``); generators are drained
    into a list with a running item cap. Anything else is refused.
    """
    t = type(x)
    if t in SIZED:
        st.charge(len(x))
        return x
    if t in LAZY:
        st.alive()
        cap = st.budgets.max_items
        out: list[Any] = []
        append = out.append
        for item in x:
            append(item)
            if len(out) > cap:
                st.check_items(len(out))
        st.charge(len(out))
        return out
    not_iterable(st, x)


def not_iterable(st: RunState, x: Any) -> NoReturn:
    t = type(x)
    if t in PLAIN_DATA:  # ordinary Python error for ordinary values (scripts may catch it)
        raise TypeError(f"'{t.__name__}' object is not iterable")
    st.refuse(f"cannot iterate over {describe(x)}")


def check_collisions(st: RunState, items: Any) -> None:
    """Refuse many distinct keys sharing hashes before a set/dict is built from them in C.

    Int, float and tuple hashes are not randomized (``hash(i * (2**61 - 1)) == 0``) and
    CPython compares each colliding key with every other one: building a set of 40k such
    ints is one uninterruptible 13 s C call (measured). The work is estimated from a random
    sample (the script cannot predict which items are looked at): pairs of distinct,
    equal-hash items in the sample, scaled by (n / sample size)^2. Equal keys are cheap
    (the first comparison matches) and do not count.
    """
    n = len(items)
    t = type(items)
    if n < COLLISION_CHECK_MIN or t in (str, bytes, set, frozenset, dict) or t is type({}.keys()):
        return  # too small to matter, or hashes are randomized / keys already unique
    if t is range:
        if items.step % HASH_MODULUS == 0:  # every item has the same hash
            st.exceeded("hash_collisions", MAX_COLLISION_WORK, "range items all share one hash")
        return
    if t is not list and t is not tuple:
        items = list(items)
    picked = [items[i] for i in _random.sample(range(n), COLLISION_SAMPLE)]
    groups: dict[int, list[Any]] = {}
    for item in picked:
        groups.setdefault(hash(item), []).append(item)
    pairs = 0
    for group in groups.values():
        if len(group) > 1:
            distinct = len(set(group))  # at most COLLISION_SAMPLE items: bounded cost
            pairs += distinct * (distinct - 1) // 2
    if pairs and pairs * (n / COLLISION_SAMPLE) ** 2 > MAX_COLLISION_WORK:
        st.exceeded("hash_collisions", MAX_COLLISION_WORK, "too many distinct keys with the same hash")


def check_tuple_depth(st: RunState, t: tuple[Any, ...]) -> tuple[Any, ...]:
    """Refuse ``t`` if tuples nest more than MAX_TUPLE_DEPTH deep. Charged per tuple visited."""
    for item in t:
        if type(item) is tuple:
            break
    else:
        return t  # flat: the common case, no walk
    depths: dict[int, int] = {}  # id -> depth, for tuples reachable from t (alive during the walk)
    stack: list[tuple[tuple[Any, ...], bool]] = [(t, False)]
    visited = 0
    while stack:
        node, done = stack.pop()
        if done:
            depth = 1 + max((depths[id(c)] for c in node if type(c) is tuple), default=0)
            if depth > MAX_TUPLE_DEPTH:
                st.exceeded("nesting", MAX_TUPLE_DEPTH, "tuples nested too deeply")
            depths[id(node)] = depth
            continue
        if id(node) in depths:
            continue
        visited += 1
        if visited >= 10_000:  # a wide structure: charge as we go, not only at the end
            st.charge(visited)
            visited = 0
        stack.append((node, True))
        stack.extend((c, False) for c in node if type(c) is tuple and id(c) not in depths)
    st.charge(visited)
    return t


def dict_from_pairs(st: RunState, pairs: Any) -> dict[Any, Any]:
    """``dict(pairs)`` with the key-collision check (pairs already materialized)."""
    if type(pairs) is dict:
        return dict(pairs)
    if len(pairs) >= COLLISION_CHECK_MIN:
        keys = []
        for pair in pairs:
            if type(pair) is not tuple and type(pair) is not list:
                break  # dict() reports the malformed element itself
            keys.append(pair[0] if len(pair) else None)
        else:
            check_collisions(st, keys)
    return dict(pairs)


def check_pairs_depth(st: RunState, pairs: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    for pair in pairs:
        check_tuple_depth(st, pair)
    return pairs


def _text_size(x: Any) -> int:
    """Most characters a %-conversion of a sanitized argument can produce (widths aside)."""
    t = type(x)
    if t is str:
        return len(x)
    if t is int:
        return x.bit_length() // 3 + 2
    if t is SafeText:
        return len(x.text)
    return 400  # float (%f of 1e308 is 316 characters), bool, None


@functools.lru_cache(maxsize=8)
def _int_limits(bits: int) -> tuple[int, int]:
    # Immutable ints, cached: building a 100k-bit int costs more than a whole small call.
    limit = 1 << bits
    return limit, -limit


def describe(obj: Any) -> str:
    script_repr = getattr(type(obj), "script_repr", None)
    return script_repr(obj) if script_repr is not None else type(obj).__name__


def check_encoding(encoding: Any, errors: Any) -> None:
    if type(encoding) is not str or encoding.lower() not in ENCODINGS:
        raise ValueError(f"unsupported encoding (use one of: {', '.join(sorted(ENCODINGS))})")
    if type(errors) is not str or errors not in ERROR_MODES:
        raise ValueError(f"unsupported errors mode (use one of: {', '.join(sorted(ERROR_MODES))})")


def text_of(st: RunState, x: Any, as_repr: bool = False) -> str:
    """Safe str()/repr() bounded by max_str (a budget error past it)."""
    limit = st.budgets.max_str
    try:
        return safe_repr(x, st, limit) if as_repr else safe_str(x, st, limit)
    except TooLong:
        st.exceeded("max_str", limit, "text representation too long")


# -- size-checking method wrappers (one factory per method) ----------------------------------


def _str_join(st: RunState, s: str) -> Callable[..., str]:
    def join(iterable: Any) -> str:
        items = materialize(st, iterable)
        try:
            total = sum(map(len, items))
        except TypeError:
            total = 0  # a non-str item: str.join raises its own TypeError below
        st.check_str(total + len(s) * max(len(items) - 1, 0))
        return s.join(items)

    return join


def _str_replace(st: RunState, s: str) -> Callable[..., str]:
    def replace(old: Any, new: Any, count: Any = -1) -> str:
        if type(old) is str and type(new) is str and type(count) in INTLIKE:
            n = s.count(old) if old else len(s) + 1
            if count >= 0:
                n = min(n, count)
            st.check_str(len(s) + max(n * (len(new) - len(old)), 0))
        return s.replace(old, new, count)

    return replace


def _str_width(name: str) -> Factory:
    def factory(st: RunState, s: str) -> Callable[..., str]:
        method = getattr(s, name)

        def pad(width: Any, *fill: Any) -> str:
            if type(width) in INTLIKE:
                st.check_str(width)
            return method(width, *fill)

        return pad

    return factory


def _str_expandtabs(st: RunState, s: str) -> Callable[..., str]:
    def expandtabs(tabsize: Any = 8) -> str:
        if type(tabsize) in INTLIKE:
            st.check_str(len(s) + s.count("\t") * max(tabsize, 0))
        return s.expandtabs(tabsize)

    return expandtabs


def _str_case(name: str) -> Factory:
    # upper()/casefold()... can grow a string at most 3x ('ß' -> 'SS'): check the result.
    def factory(st: RunState, s: str) -> Callable[[], str]:
        method = getattr(s, name)
        if len(s) * 3 <= st.budgets.max_str:
            return method  # cannot reach the limit: no wrapper, no overhead

        def change_case() -> str:
            r = method()
            st.check_str(len(r))
            return r

        return change_case

    return factory


def _str_encode(st: RunState, s: str) -> Callable[..., bytes]:
    def encode(encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        check_encoding(encoding, errors)
        st.check_bytes(len(s))
        r = s.encode(encoding, errors)
        st.check_bytes(len(r))
        return r

    return encode


def _bytes_decode(st: RunState, b: bytes) -> Callable[..., str]:
    def decode(encoding: Any = "utf-8", errors: Any = "strict") -> str:
        check_encoding(encoding, errors)
        r = b.decode(encoding, errors)
        st.check_str(len(r))
        return r

    return decode


def _result_items(name: str) -> Factory:
    # split()/splitlines(): one item per character at worst; check and charge the result.
    def factory(st: RunState, s: Any) -> Callable[..., list[Any]]:
        method = getattr(s, name)
        if len(s) < 1024 and len(s) < st.budgets.max_items:
            return method  # a short string splits into few items: no wrapper needed

        def split(*args: Any, **kwargs: Any) -> list[Any]:
            r = method(*args, **kwargs)
            st.check_items(len(r))
            st.charge(len(r))
            return r

        return split

    return factory


def _result_str(name: str) -> Factory:
    def factory(st: RunState, s: Any) -> Callable[..., str]:
        method = getattr(s, name)

        def call(*args: Any) -> str:
            r = method(*args)
            st.check_str(len(r))
            return r

        return call

    return factory


def _list_extend(st: RunState, lst: list[Any]) -> Callable[[Any], None]:
    def extend(iterable: Any) -> None:
        items = materialize(st, iterable)
        st.check_items(len(lst) + len(items))
        lst.extend(items)

    return extend


def _list_sort(st: RunState, lst: list[Any]) -> Callable[..., None]:
    def sort(*, key: Any = None, reverse: Any = False) -> None:
        st.charge(len(lst))
        lst.sort(key=key, reverse=reverse)

    return sort


def _dict_update(st: RunState, d: dict[Any, Any]) -> Callable[..., None]:
    def update(*args: Any, **kwargs: Any) -> None:
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        other = materialize(st, args[0]) if args else ()
        st.check_items(len(d) + len(other) + len(kwargs))
        if type(other) is not dict:
            other = dict_from_pairs(st, other)
        d.update(other, **kwargs)

    return update


def _set_op(name: str, grows: bool) -> Factory:
    # Set methods iterate their arguments in C: materialize (charge) them first.
    def factory(st: RunState, s: Any) -> Callable[..., Any]:
        method = getattr(s, name)

        def call(*others: Any) -> Any:
            items = [materialize(st, o) for o in others]
            if grows:
                st.check_items(len(s) + sum(map(len, items)))
                for group in items:
                    check_collisions(st, group)
            return method(*items)

        return call

    return factory


# -- the attribute allow-list ----------------------------------------------------------------


def _plain(*names: str) -> dict[str, Factory | None]:
    return dict.fromkeys(names)


_STR_ATTRS: dict[str, Factory | None] = {
    **_plain(
        "count", "endswith", "find", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit",
        "isidentifier", "islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper", "lstrip",
        "partition", "removeprefix", "removesuffix", "rfind", "rindex", "rpartition", "rstrip", "startswith",
        "strip",
    ),
    "join": _str_join,
    "replace": _str_replace,
    "ljust": _str_width("ljust"),
    "rjust": _str_width("rjust"),
    "center": _str_width("center"),
    "zfill": _str_width("zfill"),
    "expandtabs": _str_expandtabs,
    "encode": _str_encode,
    "split": _result_items("split"),
    "rsplit": _result_items("rsplit"),
    "splitlines": _result_items("splitlines"),
    **{name: _str_case(name) for name in ("upper", "lower", "casefold", "title", "capitalize", "swapcase")},
}  # fmt: skip

_BYTES_ATTRS: dict[str, Factory | None] = {
    **_plain(
        "count", "endswith", "find", "index", "isalnum", "isalpha", "isascii", "isdigit", "isspace", "lower",
        "lstrip", "rfind", "rstrip", "startswith", "strip", "upper",
    ),
    "decode": _bytes_decode,
    "hex": _result_str("hex"),
    "split": _result_items("split"),
}  # fmt: skip

_LIST_ATTRS: dict[str, Factory | None] = {
    **_plain("append", "clear", "copy", "count", "index", "insert", "pop", "remove", "reverse"),
    "extend": _list_extend,
    "sort": _list_sort,
}

def _dict_items(st: RunState, d: dict[Any, Any]) -> Callable[[], list[tuple[Any, Any]]]:
    # A list snapshot rather than a live view: the (key, value) tuples it yields are new
    # tuples holding script values, so their nesting depth is checked here, once.
    def items() -> list[tuple[Any, Any]]:
        pairs = list(d.items())
        st.charge(len(pairs))
        if tuple in map(type, d.values()) or tuple in map(type, d):
            check_pairs_depth(st, pairs)
        return pairs

    return items


def _dict_popitem(st: RunState, d: dict[Any, Any]) -> Callable[[], tuple[Any, Any]]:
    def popitem() -> tuple[Any, Any]:
        return check_tuple_depth(st, d.popitem())

    return popitem


_DICT_ATTRS: dict[str, Factory | None] = {
    **_plain("clear", "copy", "get", "keys", "pop", "setdefault", "values"),
    "items": _dict_items,
    "popitem": _dict_popitem,
    "update": _dict_update,
}

_FROZENSET_ATTRS: dict[str, Factory | None] = {
    "copy": None,
    "union": _set_op("union", True),
    "symmetric_difference": _set_op("symmetric_difference", True),
    "intersection": _set_op("intersection", False),
    "difference": _set_op("difference", False),
    "issubset": _set_op("issubset", False),
    "issuperset": _set_op("issuperset", False),
    "isdisjoint": _set_op("isdisjoint", False),
}

_SET_ATTRS: dict[str, Factory | None] = {
    **_FROZENSET_ATTRS,
    **_plain("add", "clear", "discard", "pop", "remove"),
    "update": _set_op("update", True),
    "symmetric_difference_update": _set_op("symmetric_difference_update", True),
    "intersection_update": _set_op("intersection_update", False),
    "difference_update": _set_op("difference_update", False),
}

BASE_ATTRS: dict[type, dict[str, Factory | None]] = {
    str: _STR_ATTRS,
    bytes: _BYTES_ATTRS,
    list: _LIST_ATTRS,
    dict: _DICT_ATTRS,
    set: _SET_ATTRS,
    frozenset: _FROZENSET_ATTRS,
    tuple: _plain("count", "index"),
    int: _plain("bit_length", "bit_count"),
    bool: _plain("bit_length", "bit_count"),
    float: _plain("is_integer"),
    range: _plain("start", "stop", "step", "count", "index"),
}


def build_attrs(facades: list[type]) -> dict[type, dict[str, Factory | None]]:
    """The full allow-list: built-in types plus each facade class's ``PUBLIC`` names."""
    table = dict(BASE_ATTRS)
    for cls in facades:
        table[cls] = dict.fromkeys(cls.PUBLIC)  # type: ignore[attr-defined]
    return table


# -- the hooks for one call --------------------------------------------------------------------


def make_hooks(
    st: RunState,
    attrs: dict[type, dict[str, Factory | None]],
    subscriptable: frozenset[type],
    print_collector: Callable[[RunState], Any],
) -> dict[str, Any]:
    b = st.budgets
    max_str, max_items, max_bits = b.max_str, b.max_items, b.max_int_bits
    int_limit, neg_int_limit = _int_limits(max_bits)
    missing = object()

    no_attrs: dict[str, Factory | None] = {}

    def getattr_(obj: Any, name: str) -> Any:
        # Hot path first: an allowed plain method of an allowed type, script not stopped.
        # (RestrictedPython only ever passes constant str names; a script cannot call this.)
        how = attrs.get(type(obj), no_attrs).get(name, missing)
        if how is None and st.dead is None:
            st.ticks_left -= 1  # counts as a loop tick (see policy._TICKING_GUARDS)
            if st.ticks_left <= 0:
                st.check_clock()
            return getattr(obj, name)
        return getattr_slow(obj, name, how)

    def getattr_slow(obj: Any, name: Any, how: Any) -> Any:
        st.tick()
        if how is not missing:
            return how(st, obj)
        t = type(obj)
        if isinstance(obj, BaseException) and name == "args":
            return exception_args(obj)
        if t in PLAIN_DATA and type(name) is str and not hasattr(t, name):
            # A typo or a None where a dict was expected: the ordinary, catchable error.
            raise AttributeError(f"'{t.__name__}' object has no attribute '{name}'")
        st.refuse(f"attribute '{name}' of {describe(obj)} is not available")

    def getitem_(obj: Any, key: Any) -> Any:
        st.ticks_left -= 1
        if st.ticks_left <= 0 or st.dead is not None:
            st.check_clock()
        if type(obj) in subscriptable:
            return obj[key]
        st.refuse(f"{describe(obj)} cannot be indexed")

    def getiter_(obj: Any) -> Any:
        t = type(obj)
        if t in SIZED:
            st.charge(len(obj))
            return obj
        if t in LAZY:
            st.alive()
            return obj
        not_iterable(st, obj)

    def unpack_sequence_(it: Any, spec: Any, _getiter: Any) -> Any:
        # Native unpacking stops after len(targets)+1 items (or collects a starred target
        # from a sized / self-charging iterable), so no list() of the whole thing here.
        return getiter_(it)

    def iter_unpack_sequence_(it: Any, spec: Any, _getiter: Any) -> Any:
        return getiter_(it)

    def write_(obj: Any) -> Any:
        st.ticks_left -= 1
        if st.ticks_left <= 0 or st.dead is not None:
            st.check_clock()
        if type(obj) in WRITABLE:
            return obj
        st.refuse(f"{describe(obj)} cannot be modified")

    def apply_(func: Any, *args: Any, **kwargs: Any) -> Any:
        for key in kwargs:
            if key.startswith("_"):
                st.refuse(f'keyword argument "{key}" is not allowed')
        st.charge(len(args) + len(kwargs))
        return func(*args, **kwargs)

    def nest_(t: tuple[Any, ...]) -> tuple[Any, ...]:
        return check_tuple_depth(st, t)

    def sized_(container: Any) -> Any:
        if len(container) > max_items:
            st.check_items(len(container))
        return container

    # -- growth operators: check before allocating --

    def add_(a: Any, b: Any) -> Any:
        ta = type(a)
        if ta is int and type(b) is int:
            r = a + b
            if neg_int_limit < r < int_limit:
                return r
            st.check_bits(r.bit_length())
            return r
        if ta is str and type(b) is str:
            if len(a) + len(b) > max_str:
                st.check_str(len(a) + len(b))
            return a + b
        if (ta is list or ta is tuple) and type(b) is ta:
            st.check_items(len(a) + len(b))
            st.charge(len(b))
        elif ta is bytes and type(b) is bytes:
            st.check_bytes(len(a) + len(b))
        return a + b

    def mul_(a: Any, b: Any) -> Any:
        ta, tb = type(a), type(b)
        if ta in INTLIKE and tb in INTLIKE:
            if a and b and a.bit_length() + b.bit_length() > max_bits:
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

    def pow_(a: Any, b: Any) -> Any:
        if type(a) in INTLIKE and type(b) in INTLIKE and b > 1 and (a > 1 or a < -1):
            # |a| >= 2, so the result has at least b bits: compare b first (no float overflow).
            st.check_bits(b if b > max_bits else math.log2(abs(a)) * b)
        return a**b

    def lshift_(a: Any, b: Any) -> Any:
        if type(a) in INTLIKE and type(b) in INTLIKE and a and b > 0:
            st.check_bits(a.bit_length() + b)
        return a << b

    def mod_(a: Any, b: Any) -> Any:
        ta = type(a)
        if ta is str:
            return percent_format(a, b)
        if ta is bytes:
            raise TypeError("bytes %-formatting is not supported; format a str and encode it")
        return a % b

    percent_specs: dict[str, list[tuple[str | None, str | None, str | None, str]]] = {}

    def percent_format(fmt: str, args: Any) -> str:
        specs = percent_specs.get(fmt)
        if specs is None:  # parsed once per format string and call (loops reuse it)
            specs = [(m["key"], m["width"], m["prec"], m["conv"]) for m in _PERCENT_SPEC.finditer(fmt)]
            st.charge(len(specs))
            if len(percent_specs) < 256:
                percent_specs[fmt] = specs
        targs = type(args)
        uses_mapping = targs is dict and any(spec[0] is not None for spec in specs)
        if uses_mapping:
            st.charge(len(args))
            safe: Any = {k: sanitize_format_arg(v, st, max_str) for k, v in args.items()}
            positional: Any = ()
        elif targs is tuple:
            st.charge(len(args))
            safe = positional = tuple(sanitize_format_arg(a, st, max_str) for a in args)
        else:
            safe = sanitize_format_arg(args, st, max_str)
            positional = (safe,)
        # Upper bound of the result before building it: the format's own text, every width
        # and precision, and every argument each time a conversion uses it.
        total = len(fmt)
        index = 0
        for key, width, prec, conv in specs:
            if conv == "%":
                continue
            for val in (width, prec):
                if val == "*":
                    star = positional[index] if index < len(positional) else 0
                    index += 1
                    total += abs(star) if type(star) in INTLIKE else 0
                elif val:
                    total += int(val) if len(val) < 10 else max_str + 1
            if key is not None:
                arg = safe.get(key) if uses_mapping else None
            else:
                arg = positional[index] if index < len(positional) else None
                index += 1
            total += _text_size(arg)
            if total > max_str:
                st.check_str(total)
        r = fmt % safe
        st.check_str(len(r))
        return r

    def fmt_(value: Any, conversion: int, spec: Any) -> str:
        if spec:
            for m in _SPEC_NUMBER.finditer(spec):
                digits = m.group()
                if len(digits) > 9 or int(digits) > max_str:
                    st.exceeded("max_str", max_str, f"format width {digits[:12]}")
        if conversion == 114:  # !r
            value = text_of(st, value, as_repr=True)
        elif conversion == 97:  # !a
            value = text_of(st, value, as_repr=True).encode("ascii", "backslashreplace").decode("ascii")
        elif conversion == 115 or type(value) not in (str, int, float, bool, type(None)):
            value = text_of(st, value)
        if not spec and type(value) is str:
            return value
        r = format(value, spec)
        st.check_str(len(r))
        return r

    def iadd_(x: Any, y: Any) -> Any:
        if type(x) is int and type(y) is int:  # the loop-counter case, inlined
            r = x + y
            if neg_int_limit < r < int_limit:
                return r
            st.check_bits(r.bit_length())
            return r
        if type(x) is list:  # in place, like native `+=` (aliases see the change)
            items = materialize(st, y)
            st.check_items(len(x) + len(items))
            x += items
            return x
        return add_(x, y)

    def imul_(x: Any, y: Any) -> Any:
        if type(x) is list and type(y) in INTLIKE:
            st.check_items(len(x) * max(y, 0))
            st.charge(len(x) * max(y, 0))
            x *= y
            return x
        return mul_(x, y)

    def inplacevar_(op: str, x: Any, y: Any) -> Any:
        # Only reached if the policy left an augmented assignment to RestrictedPython.
        if op == "+=":
            return iadd_(x, y)
        if op == "*=":
            return imul_(x, y)
        if op == "**=":
            return pow_(x, y)
        if op == "<<=":
            return lshift_(x, y)
        if op == "%=":
            return mod_(x, y)
        fallback = _INPLACE_FALLBACK.get(op)
        if fallback is None:
            st.refuse(f"operator {op} is not supported")
        return fallback(x, y)

    def print_(_getattr: Any) -> Any:
        return print_collector(st)

    return {
        "_getattr_": getattr_,
        "_getitem_": getitem_,
        "_getiter_": getiter_,
        "_iter_unpack_sequence_": iter_unpack_sequence_,
        "_unpack_sequence_": unpack_sequence_,
        "_write_": write_,
        "_apply_": apply_,
        "_inplacevar_": inplacevar_,
        "_print_": print_,
        "_step_": st.step,
        "_tick_": st.tick,
        "_enter_": st.enter,
        "_leave_": st.leave,
        "_sized_": sized_,
        "_nest_": nest_,
        "_add_": add_,
        "_iadd_": iadd_,
        "_imul_": imul_,
        "_mul_": mul_,
        "_pow_": pow_,
        "_lshift_": lshift_,
        "_mod_": mod_,
        "_fmt_": fmt_,
    }


_INPLACE_FALLBACK: dict[str, Callable[[Any, Any], Any]] = {
    "-=": operator.isub,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    ">>=": operator.irshift,
    "&=": operator.iand,
    "|=": operator.ior,
    "^=": operator.ixor,
}
