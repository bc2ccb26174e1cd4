"""Per-type attribute allow-list, and the size-checking wrappers for risky methods.

``BASE_ATTRS[type][name]`` is ``None`` for a method handed out as it is, or a factory
``(st, obj) -> wrapper`` for one that can build something big or iterate its argument in
C: the wrapper checks the size *before* building and charges the items as steps.
Anything not listed is refused by ``_getattr_``.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any

from sandbox.worker.budget import RunState
from sandbox.worker.containers import (
    CHARS_PER_STEP,
    INTLIKE,
    charge_comparisons,
    check_collisions,
    check_pairs_depth,
    check_tuple_depth,
    dict_from_pairs,
    materialize,
    sort_items,
)
from sandbox.worker.convert import TooLong, safe_repr, safe_str
from sandbox.worker.formatting import str_format

ENCODINGS = frozenset({"utf-8", "utf8", "ascii", "latin-1", "latin1", "iso-8859-1", "utf-16", "utf-32"})
ERROR_MODES = frozenset({"strict", "ignore", "replace", "backslashreplace", "surrogatepass"})
for _name in ENCODINGS:  # import the codec modules now, before a worker confines itself
    codecs.lookup(_name)

Factory = Callable[[RunState, Any], Any]
LONG_TEXT = 4096  # characters from which a text method's C work is charged as steps


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
        size = total + len(s) * max(len(items) - 1, 0)
        st.check_str(size)
        if size >= LONG_TEXT:
            st.charge(size // CHARS_PER_STEP)  # copying the text: C work no tick stands for
        return s.join(items)

    return join


def _str_replace(st: RunState, s: str) -> Callable[..., str]:
    def replace(old: Any, new: Any, count: Any = -1) -> str:
        if type(old) is str and type(new) is str and type(count) in INTLIKE:
            n = s.count(old) if old else len(s) + 1
            if count >= 0:
                n = min(n, count)
            size = len(s) + max(n * (len(new) - len(old)), 0)
            st.check_str(size)
            if size >= LONG_TEXT:
                st.charge((len(s) + size) // CHARS_PER_STEP)  # the count() scan and the copy
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
            st.charge(len(s) // CHARS_PER_STEP)  # the scan, before it runs
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


def _str_format(st: RunState, s: str) -> Callable[..., str]:
    def format(*args: Any, **kwargs: Any) -> str:
        return str_format(st, s, args, kwargs, text_of)

    return format


def _str_format_map(st: RunState, s: str) -> Callable[[Any], str]:
    def format_map(mapping: Any) -> str:
        if type(mapping) is not dict:
            raise TypeError("format_map() needs a dict")
        return str_format(st, s, (), mapping, text_of, positional=False)

    return format_map


def _list_extend(st: RunState, lst: list[Any]) -> Callable[[Any], None]:
    def extend(iterable: Any) -> None:
        items = materialize(st, iterable)
        st.check_items(len(lst) + len(items))
        lst.extend(items)

    return extend


def _list_sort(st: RunState, lst: list[Any]) -> Callable[..., None]:
    def sort(*, key: Any = None, reverse: Any = False) -> None:
        st.charge(len(lst))
        if key is None:
            charge_comparisons(st, lst, True)
            lst.sort(reverse=reverse)
        else:
            lst[:] = sort_items(st, lst, key, reverse)

    return sort


def _dict_update(st: RunState, d: dict[Any, Any]) -> Callable[..., None]:
    def update(*args: Any, **kwargs: Any) -> None:
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        other = materialize(st, args[0]) if args else ()
        st.check_items(len(d) + len(other) + len(kwargs))
        if type(other) is not dict:
            other = dict_from_pairs(st, other)
        check_collisions(st, d, other)  # every key of other is compared with d's
        d.update(other, **kwargs)

    return update


def _set_op(name: str, grows: bool) -> Factory:
    # Set methods iterate their arguments in C, hashing each item into (or looking it up
    # in) the set: materialize (charge) them first, and check their hashes with the set's.
    def factory(st: RunState, s: Any) -> Callable[..., Any]:
        method = getattr(s, name)

        def call(*others: Any) -> Any:
            items = [materialize(st, o) for o in others]
            if grows:
                st.check_items(len(s) + sum(map(len, items)))
            check_collisions(st, s, *items)
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
    "format": _str_format,
    "format_map": _str_format_map,
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

