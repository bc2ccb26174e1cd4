"""Turning script values into text and into plain JSON data, safely.

Why not ``repr``/``str``: the built-in ones print addresses (``<function f at 0x7f...>``),
recurse without bound, and call whatever ``__repr__`` an object has. Everything a script
can turn into text (``str``, ``repr``, f-strings, ``%``, ``print``/``log``, exception
messages) goes through ``safe_repr``/``safe_str`` here instead.

Why not ``json.dumps`` on the result: the host must never run script code or see a live
object, so results are copied into exact built-in JSON types here, inside the budget.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable
from typing import Any

import orjson

from sandbox.worker.budget import RunState
from sandbox.worker.containers import ScriptClass

PLAIN_SCALARS = (str, int, float, bool, type(None))
_SCALAR_TYPES = frozenset(PLAIN_SCALARS)
_METHOD_TYPES = frozenset(
    {types.BuiltinFunctionType, types.MethodType, types.MethodWrapperType, types.BuiltinMethodType}
)

# Depth beyond which containers are shown as "..." (repr) or refused (results).
MAX_REPR_DEPTH = 32
MAX_RESULT_DEPTH = 64
INT_MIN, UINT_MAX = -(2**63), 2**64 - 1

# Host details that must not reach a script or a user: addresses in C-made messages
# ("<built-in method x of str object at 0x7f..>"), nested qualnames of our own helpers, and
# file paths.
_SCRUB = (
    (re.compile(r" at 0x[0-9a-fA-F]+"), ""),
    (re.compile(r"\b0x[0-9a-fA-F]{6,}\b"), "0x?"),
    (re.compile(r"(?:[A-Za-z_][\w]*\.)*<locals>\."), ""),
    (re.compile(r"(?:/[^\s'\"/]+)+/?"), "<path>"),
)


def scrub(text: str) -> str:
    """Remove addresses, host paths and helper qualnames from a host-made message."""
    if len(text) > 4096:
        text = text[:4096] + "..."
    for pattern, repl in _SCRUB:
        text = pattern.sub(repl, text)
    return text


class TooLong(Exception):
    """Internal: a text representation ran past its limit."""


_CHUNK = 1 << 16  # characters measured at a time: bounds the memory a length count takes


def _quote_slack(s: str) -> int:
    # repr() picks its quote for the whole string; a chunk's repr may pick the other one
    # and not escape quotes the whole string's repr escapes.
    return s.count("'") if "'" in s and '"' in s else 0


def repr_length(s: str, limit: int) -> int:
    """An upper bound of ``len(repr(s))`` (exact up to quote escaping), computed without
    building more than a chunk's repr at a time; counting stops once past ``limit``."""
    if s.isascii() and s.isprintable():
        return len(s) + 2 + s.count("\\") + _quote_slack(s)
    total = 2 + _quote_slack(s)
    for i in range(0, len(s), _CHUNK):
        total += len(repr(s[i : i + _CHUNK])) - 2
        if total > limit:
            break
    return total


def ascii_length(s: str, limit: int, of_repr: bool) -> int:
    """An upper bound of ``len(ascii(s))`` (``of_repr``) or of ``s`` with every non-ASCII
    character backslash-escaped (up to 10 characters each), counted chunk by chunk."""
    if s.isascii():
        return repr_length(s, limit) if of_repr else len(s)
    total = 2 + _quote_slack(s) if of_repr else 0
    for i in range(0, len(s), _CHUNK):
        chunk = s[i : i + _CHUNK]
        total += len(ascii(chunk)) - 2 if of_repr else len(chunk.encode("ascii", "backslashreplace"))
        if total > limit:
            break
    return total


def bytes_repr_length(b: bytes, limit: int) -> int:
    """An upper bound of ``len(repr(b))`` (at most 4 characters per byte), chunk by chunk."""
    total = 3 + (b.count(b"'") if b"'" in b and b'"' in b else 0)
    for i in range(0, len(b), _CHUNK):
        total += len(repr(b[i : i + _CHUNK])) - 3
        if total > limit:
            break
    return total


class SafeText:
    """Stands in for a non-plain value inside ``%`` formatting: str() and repr() are safe."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def _type_name(x: Any) -> str:
    return "class" if type(x) is ScriptClass else type(x).__name__


def exception_args(exc: BaseException) -> tuple[Any, ...]:
    """``e.args`` as the script may see it: plain scalars only, host strings scrubbed."""
    out: list[Any] = []
    for a in exc.args[:16]:
        if type(a) is str:
            out.append(scrub(a))
        elif type(a) in _SCALAR_TYPES:
            out.append(a)
        else:
            out.append(safe_repr(a, None, 2048, strict=False))
    return tuple(out)


def exception_message(exc: BaseException) -> str:
    if isinstance(exc, UnicodeError) and all(type(a) in (str, bytes, int) for a in exc.args):
        return scrub(str(exc))  # "'utf-8' codec can't decode byte 0xff in position 0: ..."
    args = exception_args(exc)
    if not args:
        return ""
    if len(args) == 1:
        a = args[0]
        if isinstance(exc, KeyError) and type(exc.args[0]) in _SCALAR_TYPES:
            return repr(a)  # str(KeyError('k')) is "'k'"
        return a if type(a) is str else repr(a)
    return "(" + ", ".join(repr(a) for a in args) + ")"


def safe_str(x: Any, st: RunState | None, limit: int) -> str:
    """``str(x)`` without addresses, host objects or unbounded output."""
    t = type(x)
    if t is str:
        if len(x) > limit:
            raise TooLong
        return x
    if t is int or t is float or t is bool or x is None:
        return str(x)
    if isinstance(x, BaseException):
        text = exception_message(x)
        if len(text) > limit:
            raise TooLong
        return text
    return safe_repr(x, st, limit)


def safe_repr(x: Any, st: RunState | None, limit: int, strict: bool = True) -> str:
    """``repr(x)`` for script values. Raises ``TooLong`` past ``limit`` (or truncates if not strict)."""
    w = _ReprWriter(st, limit)
    try:
        _write(w, x, 0, ())
    except TooLong:
        if strict:
            raise
        return "".join(w.parts)[:limit] + "..."
    return "".join(w.parts)


class _ReprWriter:
    """One ``safe_repr`` in progress: the pieces written so far and their total length.

    Every piece goes through ``emit``, which stops (``TooLong``) before the text passes
    ``limit``; containers charge ``st`` one step per item as they are entered.
    """

    __slots__ = ("limit", "parts", "size", "st")

    def __init__(self, st: RunState | None, limit: int) -> None:
        self.st = st
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def emit(self, s: str) -> None:
        self.size += len(s)
        if self.size > self.limit:
            raise TooLong
        self.parts.append(s)


_Writer = Callable[[_ReprWriter, Any, int, tuple[int, ...]], None]  # one per kind of value


def _write(w: _ReprWriter, v: Any, depth: int, seen: tuple[int, ...]) -> None:
    """Write ``repr(v)``: a writer by exact type (most values), else ``_write_other``."""
    _WRITERS.get(type(v), _write_other)(w, v, depth, seen)


def _write_scalar(w: _ReprWriter, v: Any, depth: int, seen: tuple[int, ...]) -> None:
    w.emit(repr(v))  # int, float, bool, None, range: short


def _write_str(w: _ReprWriter, v: str, depth: int, seen: tuple[int, ...]) -> None:
    # Measured before it is built: repr() of a str can be 10x its length.
    room = w.limit - w.size
    if len(v) * 10 + 2 > room and repr_length(v, room) > room:
        raise TooLong
    w.emit(repr(v))


def _write_bytes(w: _ReprWriter, v: bytes, depth: int, seen: tuple[int, ...]) -> None:
    room = w.limit - w.size
    if len(v) * 4 + 3 > room and bytes_repr_length(v, room) > room:
        raise TooLong
    w.emit(repr(v))


def _enter(w: _ReprWriter, v: Any, depth: int, seen: tuple[int, ...], cycle: str) -> tuple[int, ...] | None:
    """What every container does first: ``cycle`` if it contains itself, "..." past
    ``MAX_REPR_DEPTH``, else one step per item. The ids to pass down, or None if written."""
    if id(v) in seen:
        w.emit(cycle)
        return None
    if depth >= MAX_REPR_DEPTH:
        w.emit("...")
        return None
    if w.st is not None:
        w.st.charge(len(v))
    return (*seen, id(v))


def _write_items(w: _ReprWriter, items: Any, depth: int, seen: tuple[int, ...], opening: str, closing: str) -> None:
    w.emit(opening)
    for i, item in enumerate(items):
        if i:
            w.emit(", ")
        _write(w, item, depth, seen)
    w.emit(closing)


def _write_list(w: _ReprWriter, v: list[Any], depth: int, seen: tuple[int, ...]) -> None:
    inner = _enter(w, v, depth, seen, "[...]")
    if inner is not None:
        _write_items(w, v, depth + 1, inner, "[", "]")


def _write_tuple(w: _ReprWriter, v: tuple[Any, ...], depth: int, seen: tuple[int, ...]) -> None:
    inner = _enter(w, v, depth, seen, "(...)")
    if inner is not None:
        _write_items(w, v, depth + 1, inner, "(", ",)" if len(v) == 1 else ")")


def _write_set(w: _ReprWriter, v: set[Any] | frozenset[Any], depth: int, seen: tuple[int, ...]) -> None:
    inner = _enter(w, v, depth, seen, "(...)")
    if inner is None:
        return
    if type(v) is set:
        opening, closing, empty = "{", "}", "set()"
    else:
        opening, closing, empty = "frozenset({", "})", "frozenset()"
    if v:
        _write_items(w, v, depth + 1, inner, opening, closing)
    else:
        w.emit(empty)


def _write_dict(w: _ReprWriter, v: dict[Any, Any], depth: int, seen: tuple[int, ...]) -> None:
    inner = _enter(w, v, depth, seen, "{...}")
    if inner is None:
        return
    depth += 1
    w.emit("{")
    for i, (k, val) in enumerate(v.items()):
        if i:
            w.emit(", ")
        _write(w, k, depth, inner)
        w.emit(": ")
        _write(w, val, depth, inner)
    w.emit("}")


def _write_function(w: _ReprWriter, v: types.FunctionType, depth: int, seen: tuple[int, ...]) -> None:
    w.emit(f"<function {v.__name__}>")


def _write_method(w: _ReprWriter, v: Any, depth: int, seen: tuple[int, ...]) -> None:
    name = getattr(v, "__name__", "?")
    owner = getattr(v, "__self__", None)
    if name == "_call_print":
        w.emit("<function print>")
    elif owner is None or type(owner) is types.ModuleType:
        w.emit(f"<built-in function {name}>")
    else:
        w.emit(f"<method {name}>")


def _write_class(w: _ReprWriter, v: type, depth: int, seen: tuple[int, ...]) -> None:
    # A script's class, or an exposed one (int, float, bool, an exception class).
    w.emit(f"<class '{v.__name__}'>")


def _write_other(w: _ReprWriter, v: Any, depth: int, seen: tuple[int, ...]) -> None:
    """Values whose type is not in ``_WRITERS``: exceptions, script objects, our facades."""
    t = type(v)
    if isinstance(v, BaseException):
        w.emit(_type_name(v) + "(")
        for i, a in enumerate(exception_args(v)):
            if i:
                w.emit(", ")
            w.emit(repr(a))
        w.emit(")")
    elif type(t) is ScriptClass:  # never a script method's idea of its own name
        w.emit(f"<{t.__name__} object>")
    elif (script_repr := getattr(t, "script_repr", None)) is not None:  # our facades describe themselves
        w.emit(script_repr(v))
    elif t.__name__ in ("dict_keys", "dict_values", "dict_items"):
        w.emit(t.__name__ + "(")
        _write(w, list(v), depth + 1, seen)
        w.emit(")")
    else:
        w.emit(f"<{t.__name__} object>")


# The writer for each exact type; subclasses (script classes deriving from an exception
# class) and everything else go to _write_other.
_WRITERS: dict[type, _Writer] = {
    **dict.fromkeys((int, float, bool, type(None), range), _write_scalar),
    str: _write_str,
    bytes: _write_bytes,
    list: _write_list,
    tuple: _write_tuple,
    dict: _write_dict,
    set: _write_set,
    frozenset: _write_set,
    types.FunctionType: _write_function,
    **dict.fromkeys(_METHOD_TYPES, _write_method),
    ScriptClass: _write_class,
    type: _write_class,
}


def sanitize_format_arg(x: Any, st: RunState, limit: int) -> Any:
    """A ``%``-formatting argument the C formatter may stringify without leaking anything."""
    if type(x) in _SCALAR_TYPES:
        return x
    return SafeText(safe_repr(x, st, limit))


# -- results -------------------------------------------------------------------------------


class InvalidResult(Exception):
    """The script returned something that is not plain JSON data (or is too big)."""


class InvalidNumber(InvalidResult):
    """A number JSON cannot carry (NaN, infinity, an int beyond 64 bits)."""


def to_plain(value: Any, st: RunState | None, what: str = "result") -> Any:
    """Copy ``value`` into exact JSON types (tuples become lists); raise InvalidResult otherwise."""
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    return plain_copy(value, st, what, 0)


COPIED_AS_IS = frozenset({str, bool, type(None)})  # immutable and always valid JSON


def plain_copy(v: Any, st: RunState | None, what: str, depth: int) -> Any:
    """``to_plain`` below ``depth`` levels of nesting (``to_plain`` is ``depth`` 0)."""
    return _COPIERS.get(type(v), _copy_other)(v, st, what, depth)


def _copy_sequence(v: list[Any] | tuple[Any, ...], st: RunState | None, what: str, depth: int) -> list[Any]:
    # (these four lines are in _copy_dict too: a call less per container)
    if depth >= MAX_RESULT_DEPTH:
        raise InvalidResult(f"{what}: nested deeper than {MAX_RESULT_DEPTH} levels")
    if st is not None:
        st.charge(len(v))
    if COPIED_AS_IS.issuperset(map(type, v)):  # all str/bool/None: one C-level pass
        return list(v)
    depth += 1
    out = []
    append = out.append
    copier = _COPIERS.get  # plain_copy(item, ...), one call less per item
    for item in v:
        append(item if type(item) is str else copier(type(item), _copy_other)(item, st, what, depth))
    return out


def _copy_dict(v: dict[Any, Any], st: RunState | None, what: str, depth: int) -> dict[str, Any]:
    if depth >= MAX_RESULT_DEPTH:
        raise InvalidResult(f"{what}: nested deeper than {MAX_RESULT_DEPTH} levels")
    if st is not None:
        st.charge(len(v))
    depth += 1
    out = {}
    copier = _COPIERS.get
    for k, item in v.items():
        if type(k) is not str:
            raise InvalidResult(f"{what}: object keys must be strings, not {_type_name(k)}")
        out[k] = item if type(item) is str else copier(type(item), _copy_other)(item, st, what, depth)
    return out


def _copy_as_is(v: Any, st: RunState | None, what: str, depth: int) -> Any:
    return v  # str, bool, None


def _copy_int(v: int, st: RunState | None, what: str, depth: int) -> int:
    if not INT_MIN <= v <= UINT_MAX:
        raise InvalidNumber(f"{what}: integer out of the 64-bit range")
    return v


def _copy_float(v: float, st: RunState | None, what: str, depth: int) -> float:
    if not math.isfinite(v):
        raise InvalidNumber(f"{what}: NaN and infinity are not JSON")
    return v


def _copy_other(v: Any, st: RunState | None, what: str, depth: int) -> Any:
    if depth >= MAX_RESULT_DEPTH:
        raise InvalidResult(f"{what}: nested deeper than {MAX_RESULT_DEPTH} levels")
    raise InvalidResult(f"{what}: {_type_name(v)} is not a JSON type")


# The copier for each exact type (a subclass of one is not JSON data: _copy_other).
_COPIERS: dict[type, Callable[[Any, RunState | None, str, int], Any]] = {
    list: _copy_sequence,
    tuple: _copy_sequence,
    dict: _copy_dict,
    **dict.fromkeys(COPIED_AS_IS, _copy_as_is),
    int: _copy_int,
    float: _copy_float,
}


def encode_plain(plain: Any, what: str = "result") -> bytes:
    """The JSON of data ``to_plain`` made (it can still hold lone surrogates: refused here)."""
    try:
        return orjson.dumps(plain)
    except (TypeError, ValueError) as e:  # lone surrogates, mostly
        raise InvalidResult(f"{what}: {scrub(str(e))}") from None


def copy_payload(payload: Any) -> Any:
    """A fresh, plain deep copy of the request for the script (mutations change nothing)."""
    try:
        return orjson.loads(orjson.dumps(payload))
    except (TypeError, ValueError):
        return to_plain_loose(payload)


def to_plain_loose(value: Any) -> Any:
    """Fallback copy for payloads orjson cannot round-trip (big ints, surrogates)."""
    t = type(value)
    if t in _SCALAR_TYPES:
        return value
    if isinstance(value, dict):
        return {str(k): to_plain_loose(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain_loose(v) for v in value]
    return str(value)
