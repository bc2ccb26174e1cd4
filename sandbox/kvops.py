"""The KV operations a script may perform, as one table (``OPS``), and their argument checks.

To add an op, add its ``Op`` here and its ``KVEngine._op_<name>`` in ``server.store.kv``;
everything else is derived from the table (``tests/test_kvops.py`` checks it):

- the worker's ``kv.<name>`` method (``sandbox.worker.kvapi``): its signature, argument
  checks (so the script gets a clear error at the right line) and answer check;
- the host's check of a ``kv`` frame (``validate``; the worker is untrusted) in
  ``sandbox.host.kvrelay`` and again in the store;
- the store's dispatch, which keys a write makes the caches forget, which reads the host's
  and the worker's caches keep (``Op.cache``), the type named in a wrong-type refusal.

Keys are script-level names; the host adds the namespace prefix, so nothing here can name a
key outside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.api import KVRefused

# Collections larger than this are never shipped whole to a script (smembers, hgetall,
# lrange): a blocklist with a million members must be checked with sismember/smismember.
MAX_COLLECTION_RESULT = 10_000
MAX_MEMBERS_PER_CALL = 1_000
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f]")

# Argument kinds (how the host checks each wire argument): key, value (one scalar stored as a
# string), values (list of scalars), mapping (dict str -> scalar), int, ttl (positive int
# seconds), opt_ttl (ttl or None), index (int64).
KEY, VALUE, VALUES, MAPPING, INT, TTL, OPT_TTL, INDEX = (
    "key", "value", "values", "mapping", "int", "ttl", "opt_ttl", "index",
)

# Answer kinds (what the store returns, checked again by the worker before the script sees it):
# str or None | int | bool | always True | list of str | set of str (sent as a sorted list) |
# list of bool | dict str -> str.
OPT_STR, NUM, BOOL, TRUE, STRS, STR_SET, BOOLS, STR_MAP = (
    "str?", "int", "bool", "true", "strs", "set", "bools", "map",
)

# Redis types a key can hold (named in the "holds another type" refusal).
STRING, SET, HASH, LIST = "string", "set", "hash", "list"

# Calling conventions whose script arguments need more than positional packing (see
# sandbox.worker.kvapi): smismember takes one list (or tuple) of members and answers [] for
# none without a round trip; hset takes (field, value) or one mapping.
MEMBER_LIST, FIELD_OR_MAPPING = "member_list", "field_or_mapping"


@dataclass(frozen=True)
class Op:
    """One KV operation, described once. Everything else is derived from it: the worker's
    ``kv.<name>`` method (``sandbox.worker.kvapi``), the host's check of a ``kv`` frame
    (``validate``), the store's ``KVEngine._op_<name>`` (``server.store.kv``), the caches."""

    name: str
    params: str  # the script-facing signature, e.g. "key, value, ttl=None" or "key, *members"
    args: tuple[str, ...]  # the wire arguments' kinds, one per parameter
    answer: str  # the answer's kind
    writes: bool  # changes the key (caches forget it; a dry run copies it first)
    holds: str | None  # the Redis type the key must hold, None for any
    cache: str | None = None  # read-mostly read: the tag its answers are kept under in caches
    convention: str | None = None  # MEMBER_LIST / FIELD_OR_MAPPING, else plain positional
    doc: str = ""
    # "kv.<name>: <what>" for each argument part named in a refusal, built once: no string
    # formatting on the success path.
    labels: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = ("value", "field", "amount", "ttl", "index")
        object.__setattr__(self, "labels", {part: f"kv.{self.name}: {part}" for part in parts})

    @property
    def key_shaped(self) -> bool:
        """(key) or (key, value): the worker checks these inline, and the policy may compile a
        call with a constant key to a variant that skips the key's shape check."""
        return self.args in ((KEY,), (KEY, VALUE)) and self.convention is None

    @property
    def cached_per_member(self) -> bool:
        """A cached read answering one entry per member (smismember), not one answer."""
        return self.cache is not None and self.args[-1] == VALUES

    def cache_sub(self, args: list[Any]) -> tuple[str, ...]:
        """The cache entry of one answer (validated wire args of a cached single-answer read):
        (tag,) for a key's own answer, (tag, member or field) for one inside it."""
        if self.cache is None or self.cached_per_member:
            raise ValueError(f"kv.{self.name} has no single cached answer")
        return (self.cache,) if len(self.args) == 1 else (self.cache, args[1])

    def cache_subs(self, args: list[Any]) -> list[tuple[str, ...]]:
        """The cache entries one call's answer is made of: one per member for smismember."""
        if self.cached_per_member:
            return [(self.cache, m) for m in args[1]]  # type: ignore[misc]
        return [self.cache_sub(args)]


# A small set is kept whole: one cache entry under WHOLE_SET (a frozenset of its members)
# answers every (MEMBER_TAG, member) entry of that key, so a membership check of members
# never asked before needs no round trip. Why: blocklists and word filters are small and
# read-mostly, while the members asked (invitees, a message's words) are mostly new ones,
# so per-member entries alone rarely answer a whole call. The store fetches a set whole
# after WHOLE_SET_AFTER member misses since the key last changed, and keeps it only when it
# has at most WHOLE_SET_MAX_MEMBERS members of at most WHOLE_SET_MAX_BYTES in all.
MEMBER_TAG = "m"
WHOLE_SET = ("*",)  # cannot collide: every other entry is (tag,) or (tag, str)
WHOLE_SET_AFTER = 8
WHOLE_SET_MAX_MEMBERS = 4096
WHOLE_SET_MAX_BYTES = 1024 * 1024


def whole_set_bytes(members: Any) -> int:
    """What a kept whole set costs to hold and to send: its members plus a slot each."""
    return sum(len(m) for m in members) + 64 * len(members)


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("get", "key", (KEY,), OPT_STR, False, STRING, cache="g", doc="get(key) -> str or None"),
        Op("set", "key, value, ttl=None", (KEY, VALUE, OPT_TTL), TRUE, True, STRING,
           doc="set(key, value, ttl=None) -> True"),
        Op("delete", "key", (KEY,), NUM, True, None, doc="delete(key) -> 1 if it existed, else 0"),
        Op("exists", "key", (KEY,), BOOL, False, None, cache="e", doc="exists(key) -> bool"),
        Op("incr", "key, by=1, ttl=None", (KEY, INT, OPT_TTL), NUM, True, STRING,
           doc="incr(key, by=1, ttl=None) -> new value; ttl is set only when the key has none"),
        Op("expire", "key, ttl", (KEY, TTL), BOOL, True, None, doc="expire(key, ttl) -> bool"),
        Op("ttl", "key", (KEY,), NUM, False, None, doc="ttl(key) -> seconds left, -1 without expiry, -2 missing"),
        Op("sadd", "key, *members", (KEY, VALUES), NUM, True, SET, doc="sadd(key, *members) -> number added"),
        Op("srem", "key, *members", (KEY, VALUES), NUM, True, SET, doc="srem(key, *members) -> number removed"),
        Op("sismember", "key, member", (KEY, VALUE), BOOL, False, SET, cache=MEMBER_TAG,
           doc="sismember(key, member) -> bool"),
        Op("smismember", "key, members", (KEY, VALUES), BOOLS, False, SET, cache=MEMBER_TAG,
           convention=MEMBER_LIST,
           doc="smismember(key, members) -> list of bool"),
        Op("smembers", "key", (KEY,), STR_SET, False, SET, doc="smembers(key) -> set of str"),
        Op("scard", "key", (KEY,), NUM, False, SET, doc="scard(key) -> int"),
        Op("hget", "key, field", (KEY, VALUE), OPT_STR, False, HASH, cache="h", doc="hget(key, field) -> str or None"),
        Op("hset", "key, field_or_mapping, value=None", (KEY, MAPPING), NUM, True, HASH,
           convention=FIELD_OR_MAPPING, doc="hset(key, field, value) or hset(key, mapping) -> number added"),
        Op("hdel", "key, *fields", (KEY, VALUES), NUM, True, HASH, doc="hdel(key, *fields) -> number removed"),
        Op("hgetall", "key", (KEY,), STR_MAP, False, HASH, doc="hgetall(key) -> dict"),
        Op("hincrby", "key, field, by=1", (KEY, VALUE, INT), NUM, True, HASH,
           doc="hincrby(key, field, by=1) -> new value"),
        Op("lpush", "key, *values", (KEY, VALUES), NUM, True, LIST, doc="lpush(key, *values) -> new length"),
        Op("rpush", "key, *values", (KEY, VALUES), NUM, True, LIST, doc="rpush(key, *values) -> new length"),
        Op("lrange", "key, start, stop", (KEY, INDEX, INDEX), STRS, False, LIST,
           doc="lrange(key, start, stop) -> list of str"),
        Op("ltrim", "key, start, stop", (KEY, INDEX, INDEX), TRUE, True, LIST, doc="ltrim(key, start, stop) -> True"),
        Op("llen", "key", (KEY,), NUM, False, LIST, doc="llen(key) -> int"),
    )
}




_ONLY_STR = {str}

def check_scalar(value: Any, what: str, max_bytes: int) -> str:
    # Exact types only: a str subclass could lie about its own length or encoding.
    if type(value) is str:
        if len(value) <= max_bytes and value.isascii():
            return value  # the common case, checked without building anything
        text = value
    elif type(value) is int:
        # repr() of an int over 4300 digits raises ValueError; refuse long ones first.
        if value.bit_length() > 14_000:
            raise KVRefused(f"{what} is longer than {max_bytes} bytes")
        text = repr(value)
    elif type(value) is float:
        text = repr(value)
    elif type(value) is bool:
        text = "1" if value else "0"
    else:
        raise KVRefused(f"{what} must be a str, int or float")
    if len(text) > max_bytes:
        raise KVRefused(f"{what} is longer than {max_bytes} bytes")
    if text.isascii():  # fast path: ASCII is its own UTF-8, no surrogates possible
        return text
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise KVRefused(f"{what} is longer than {max_bytes} bytes")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise KVRefused(f"{what} is not valid unicode (lone surrogate)") from None
    return text


def check_key(key: Any, max_bytes: int) -> str:
    if type(key) is not str:
        raise KVRefused("key must be a str")
    if not key:
        raise KVRefused("key must not be empty")
    if len(key) > max_bytes:
        raise KVRefused(f"key is longer than {max_bytes} bytes")
    if _CONTROL_CHARS.search(key):  # C-speed scan; a per-character Python loop cost ~10x more
        raise KVRefused("key must not contain control characters (NUL, CR, LF, ...)")
    if key.isascii():  # fast path: ASCII is its own UTF-8, no surrogates possible
        return key
    if len(key.encode("utf-8", "surrogatepass")) > max_bytes:
        raise KVRefused(f"key is longer than {max_bytes} bytes")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise KVRefused("key is not valid unicode (lone surrogate)") from None
    return key


def _int(value: Any, what: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    if type(value) is not int:
        raise KVRefused(f"{what} must be an int")
    if not low <= value <= high:
        raise KVRefused(f"{what} must be between {low} and {high}")
    return value


def _check_values(value: Any, op: Op, key_bytes: int, value_bytes: int) -> list[str]:
    if type(value) is not list or not value:
        raise KVRefused(f"kv.{op.name}: needs at least one value")
    if len(value) > MAX_MEMBERS_PER_CALL:
        raise KVRefused(f"kv.{op.name}: at most {MAX_MEMBERS_PER_CALL} values per call")
    label = op.labels["value"]
    # The common case in one pass at C speed: ASCII strs, none too long (what check_scalar
    # accepts unchanged); anything else is checked one by one for the right message.
    if set(map(type, value)) == _ONLY_STR and len(max(value, key=len)) <= value_bytes \
            and "".join(value).isascii():
        return list(value)
    return [check_scalar(v, label, value_bytes) for v in value]


def _check_mapping(value: Any, op: Op, key_bytes: int, value_bytes: int) -> dict[str, str]:
    if type(value) is not dict or not value:
        raise KVRefused(f"kv.{op.name}: needs a non-empty mapping")
    if len(value) > MAX_MEMBERS_PER_CALL:
        raise KVRefused(f"kv.{op.name}: at most {MAX_MEMBERS_PER_CALL} fields per call")
    field, label = op.labels["field"], op.labels["value"]
    return {check_scalar(k, field, value_bytes): check_scalar(v, label, value_bytes) for k, v in value.items()}


def _check_opt_ttl(value: Any, op: Op, key_bytes: int, value_bytes: int) -> int | None:
    return None if value is None else _int(value, op.labels["ttl"], 1, MAX_TTL_SECONDS)


# How the host checks (and normalises) one wire argument of each kind: (value, op, key
# bytes, value bytes) -> the wire value, or KVRefused.
CHECKS: dict[str, Callable[[Any, Op, int, int], Any]] = {
    KEY: lambda value, op, key_bytes, value_bytes: check_key(value, key_bytes),
    VALUE: lambda value, op, key_bytes, value_bytes: check_scalar(value, op.labels["value"], value_bytes),
    VALUES: _check_values,
    MAPPING: _check_mapping,
    INT: lambda value, op, key_bytes, value_bytes: _int(value, op.labels["amount"]),
    TTL: lambda value, op, key_bytes, value_bytes: _int(value, op.labels["ttl"], 1, MAX_TTL_SECONDS),
    OPT_TTL: _check_opt_ttl,
    INDEX: lambda value, op, key_bytes, value_bytes: _int(value, op.labels["index"]),
}


def validate(op_name: Any, args: Any, key_bytes: int, value_bytes: int) -> tuple[Op, list[Any]]:
    """Check one call; return the op and its normalised wire arguments or raise KVRefused."""
    if type(op_name) is not str or op_name not in OPS:
        raise KVRefused("unknown KV operation")
    op = OPS[op_name]
    if type(args) is not list or len(args) != len(op.args):
        raise KVRefused(f"kv.{op.name}: wrong number of arguments")
    return op, [CHECKS[kind](value, op, key_bytes, value_bytes) for kind, value in zip(op.args, args, strict=True)]
