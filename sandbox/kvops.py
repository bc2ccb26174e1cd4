"""The KV operations a script may perform, as data, and their argument checks.

Both sides of the process boundary use this table: the sandbox's ``kv`` facade checks a
call before sending it (so the script gets a clear error at the right line), and the host
checks it again before touching the store (the worker is untrusted). Keys are script-level
names; the host adds the namespace prefix, so nothing here can name a key outside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sandbox.api import KVError

# Collections larger than this are never shipped whole to a script (smembers, hgetall,
# lrange): a blocklist with a million members must be checked with sismember/smismember.
MAX_COLLECTION_RESULT = 10_000
MAX_MEMBERS_PER_CALL = 1_000
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f]")

# Argument kinds: key, value (one scalar stored as a string), values (list of scalars),
# mapping (dict str -> scalar), int, ttl (positive int seconds or None), index (int64).
KEY, VALUE, VALUES, MAPPING, INT, TTL, OPT_TTL, INDEX = (
    "key", "value", "values", "mapping", "int", "ttl", "opt_ttl", "index",
)


@dataclass(frozen=True)
class Op:
    name: str
    args: tuple[str, ...]
    writes: bool
    doc: str


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("get", (KEY,), False, "get(key) -> str or None"),
        Op("set", (KEY, VALUE, OPT_TTL), True, "set(key, value, ttl=None) -> True"),
        Op("delete", (KEY,), True, "delete(key) -> 1 if it existed, else 0"),
        Op("exists", (KEY,), False, "exists(key) -> bool"),
        Op("incr", (KEY, INT, OPT_TTL), True,
           "incr(key, by=1, ttl=None) -> new value; ttl is set only when the key has none"),
        Op("expire", (KEY, TTL), True, "expire(key, ttl) -> bool"),
        Op("ttl", (KEY,), False, "ttl(key) -> seconds left, -1 without expiry, -2 missing"),
        Op("sadd", (KEY, VALUES), True, "sadd(key, *members) -> number added"),
        Op("srem", (KEY, VALUES), True, "srem(key, *members) -> number removed"),
        Op("sismember", (KEY, VALUE), False, "sismember(key, member) -> bool"),
        Op("smismember", (KEY, VALUES), False, "smismember(key, members) -> list of bool"),
        Op("smembers", (KEY,), False, "smembers(key) -> set of str"),
        Op("scard", (KEY,), False, "scard(key) -> int"),
        Op("hget", (KEY, VALUE), False, "hget(key, field) -> str or None"),
        Op("hset", (KEY, MAPPING), True, "hset(key, field, value) or hset(key, mapping) -> number added"),
        Op("hdel", (KEY, VALUES), True, "hdel(key, *fields) -> number removed"),
        Op("hgetall", (KEY,), False, "hgetall(key) -> dict"),
        Op("hincrby", (KEY, VALUE, INT), True, "hincrby(key, field, by=1) -> new value"),
        Op("lpush", (KEY, VALUES), True, "lpush(key, *values) -> new length"),
        Op("rpush", (KEY, VALUES), True, "rpush(key, *values) -> new length"),
        Op("lrange", (KEY, INDEX, INDEX), False, "lrange(key, start, stop) -> list of str"),
        Op("ltrim", (KEY, INDEX, INDEX), True, "ltrim(key, start, stop) -> True"),
        Op("llen", (KEY,), False, "llen(key) -> int"),
    )
}


_LABELS: dict[str, dict[str, str]] = {
    name: {part: f"kv.{name}: {part}" for part in ("value", "field", "amount", "ttl", "index")} for name in OPS
}


def _scalar(value: Any, what: str, max_bytes: int) -> str:
    # Exact types only: a str subclass could lie about its own length or encoding.
    if type(value) is str:
        if len(value) <= max_bytes and value.isascii():
            return value  # the common case, checked without building anything
        text = value
    elif type(value) is int:
        # repr() of an int over 4300 digits raises ValueError; refuse long ones first.
        if value.bit_length() > 14_000:
            raise KVError(f"{what} is longer than {max_bytes} bytes")
        text = repr(value)
    elif type(value) is float:
        text = repr(value)
    elif type(value) is bool:
        text = "1" if value else "0"
    else:
        raise KVError(f"{what} must be a str, int or float")
    if len(text) > max_bytes:
        raise KVError(f"{what} is longer than {max_bytes} bytes")
    if text.isascii():  # fast path: ASCII is its own UTF-8, no surrogates possible
        return text
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise KVError(f"{what} is longer than {max_bytes} bytes")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise KVError(f"{what} is not valid unicode (lone surrogate)") from None
    return text


def check_key(key: Any, max_bytes: int) -> str:
    if type(key) is not str:
        raise KVError("key must be a str")
    if not key:
        raise KVError("key must not be empty")
    if len(key) > max_bytes:
        raise KVError(f"key is longer than {max_bytes} bytes")
    if _CONTROL_CHARS.search(key):  # C-speed scan; a per-character Python loop cost ~10x more
        raise KVError("key must not contain control characters (NUL, CR, LF, ...)")
    if key.isascii():  # fast path: ASCII is its own UTF-8, no surrogates possible
        return key
    if len(key.encode("utf-8", "surrogatepass")) > max_bytes:
        raise KVError(f"key is longer than {max_bytes} bytes")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise KVError("key is not valid unicode (lone surrogate)") from None
    return key


def _int(value: Any, what: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    if type(value) is not int:
        raise KVError(f"{what} must be an int")
    if not low <= value <= high:
        raise KVError(f"{what} must be between {low} and {high}")
    return value


def validate(op_name: Any, args: Any, key_bytes: int, value_bytes: int) -> tuple[Op, list[Any]]:
    """Check one call; return the op and its normalised wire arguments or raise KVError."""
    if type(op_name) is not str or op_name not in OPS:
        raise KVError("unknown KV operation")
    op = OPS[op_name]
    if type(args) is not list or len(args) != len(op.args):
        raise KVError(f"kv.{op.name}: wrong number of arguments")
    labels = _LABELS[op.name]  # prebuilt: no string formatting on the success path
    out: list[Any] = []
    for kind, value in zip(op.args, args, strict=True):
        if kind == KEY:
            out.append(check_key(value, key_bytes))
        elif kind == VALUE:
            out.append(_scalar(value, labels["value"], value_bytes))
        elif kind == VALUES:
            if type(value) is not list or not value:
                raise KVError(f"kv.{op.name}: needs at least one value")
            if len(value) > MAX_MEMBERS_PER_CALL:
                raise KVError(f"kv.{op.name}: at most {MAX_MEMBERS_PER_CALL} values per call")
            out.append([_scalar(v, labels["value"], value_bytes) for v in value])
        elif kind == MAPPING:
            if type(value) is not dict or not value:
                raise KVError(f"kv.{op.name}: needs a non-empty mapping")
            if len(value) > MAX_MEMBERS_PER_CALL:
                raise KVError(f"kv.{op.name}: at most {MAX_MEMBERS_PER_CALL} fields per call")
            out.append(
                {
                    _scalar(k, labels["field"], value_bytes): _scalar(
                        v, labels["value"], value_bytes
                    )
                    for k, v in value.items()
                }
            )
        elif kind == INT:
            out.append(_int(value, labels["amount"]))
        elif kind == TTL:
            out.append(_int(value, labels["ttl"], 1, MAX_TTL_SECONDS))
        elif kind == OPT_TTL:
            out.append(None if value is None else _int(value, labels["ttl"], 1, MAX_TTL_SECONDS))
        elif kind == INDEX:
            out.append(_int(value, labels["index"]))
    return op, out
