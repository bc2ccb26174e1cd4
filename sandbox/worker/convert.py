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
    parts: list[str] = []
    size = [0]

    def emit(s: str) -> None:
        size[0] += len(s)
        if size[0] > limit:
            raise TooLong
        parts.append(s)

    def rec(v: Any, depth: int, seen: tuple[int, ...]) -> None:
        t = type(v)
        if t in _SCALAR_TYPES or t is bytes or t is range:
            # Measured before it is built: repr() of a str can be 10x its length.
            room = limit - size[0]
            if t is str and len(v) * 10 + 2 > room and repr_length(v, room) > room:
                raise TooLong
            if t is bytes and len(v) * 4 + 3 > room and bytes_repr_length(v, room) > room:
                raise TooLong
            emit(repr(v))
            return
        if t is list or t is tuple or t is dict or t is set or t is frozenset:
            if id(v) in seen:
                emit("[...]" if t is list else "{...}" if t is dict else "(...)")
                return
            if depth >= MAX_REPR_DEPTH:
                emit("...")
                return
            if st is not None:
                st.charge(len(v))
            seen = (*seen, id(v))
            if t is dict:
                emit("{")
                for i, (k, val) in enumerate(v.items()):
                    if i:
                        emit(", ")
                    rec(k, depth + 1, seen)
                    emit(": ")
                    rec(val, depth + 1, seen)
                emit("}")
                return
            if t is list:
                opening, closing = "[", "]"
            elif t is tuple:
                opening, closing = "(", ",)" if len(v) == 1 else ")"
            elif not v:
                emit("set()" if t is set else "frozenset()")
                return
            else:
                opening, closing = ("{", "}") if t is set else ("frozenset({", "})")
            emit(opening)
            for i, item in enumerate(v):
                if i:
                    emit(", ")
                rec(item, depth + 1, seen)
            emit(closing)
            return
        if isinstance(v, BaseException):
            emit(_type_name(v) + "(")
            for i, a in enumerate(exception_args(v)):
                if i:
                    emit(", ")
                emit(repr(a))
            emit(")")
            return
        if t is ScriptClass:
            emit(f"<class '{v.__name__}'>")
            return
        if type(t) is ScriptClass:  # never a script method's idea of its own name
            emit(f"<{t.__name__} object>")
            return
        script_repr = getattr(t, "script_repr", None)  # our facades describe themselves
        if script_repr is not None:
            emit(script_repr(v))
            return
        if t is types.FunctionType:
            emit(f"<function {v.__name__}>")
            return
        if t in _METHOD_TYPES:
            name = getattr(v, "__name__", "?")
            owner = getattr(v, "__self__", None)
            if name == "_call_print":
                emit("<function print>")
            elif owner is None or type(owner) is types.ModuleType:
                emit(f"<built-in function {name}>")
            else:
                emit(f"<method {name}>")
            return
        if t is type:  # an exposed class (int, float, bool, an exception class)
            emit(f"<class '{v.__name__}'>")
            return
        if t.__name__ in ("dict_keys", "dict_values", "dict_items"):
            emit(t.__name__ + "(")
            rec(list(v), depth + 1, seen)
            emit(")")
            return
        emit(f"<{t.__name__} object>")

    try:
        rec(x, 0, ())
    except TooLong:
        if strict:
            raise
        return "".join(parts)[:limit] + "..."
    return "".join(parts)


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
    # Containers first: callers copy str items themselves, so most calls are for those.
    t = type(v)
    if t is list or t is tuple:
        if depth >= MAX_RESULT_DEPTH:
            raise InvalidResult(f"{what}: nested deeper than {MAX_RESULT_DEPTH} levels")
        if st is not None:
            st.charge(len(v))
        if COPIED_AS_IS.issuperset(map(type, v)):  # all str/bool/None: one C-level pass
            return list(v)
        depth += 1
        out_list = []
        append = out_list.append
        for item in v:
            append(item if type(item) is str else plain_copy(item, st, what, depth))
        return out_list
    if t is dict:
        if depth >= MAX_RESULT_DEPTH:
            raise InvalidResult(f"{what}: nested deeper than {MAX_RESULT_DEPTH} levels")
        if st is not None:
            st.charge(len(v))
        depth += 1
        out = {}
        for k, item in v.items():
            if type(k) is not str:
                raise InvalidResult(f"{what}: object keys must be strings, not {_type_name(k)}")
            out[k] = item if type(item) is str else plain_copy(item, st, what, depth)
        return out
    if t is str or t is bool or v is None:
        return v
    if t is int:
        if not INT_MIN <= v <= UINT_MAX:
            raise InvalidNumber(f"{what}: integer out of the 64-bit range")
        return v
    if t is float:
        if not math.isfinite(v):
            raise InvalidNumber(f"{what}: NaN and infinity are not JSON")
        return v
    if depth >= MAX_RESULT_DEPTH:
        raise InvalidResult(f"{what}: nested deeper than {MAX_RESULT_DEPTH} levels")
    raise InvalidResult(f"{what}: {_type_name(v)} is not a JSON type")


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
