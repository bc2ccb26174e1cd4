"""The worker's copy of KV reads the host said it may keep until told otherwise.

Why: a blocklist check is a KV read per invitee, and each read is a round trip to the host
(two process wake-ups). The host's own client-side cache (``server.store.tracking``) already
knows when a Redis key changes; when it answers a read from that cache it may tag the reply
with the Redis key (``"c"`` in the ``kvr`` frame), promising to send ``inv`` for that key
(or ``inv`` with ``all``) before anything else it sends to this worker once the key changes.

Freshness: the host applies every invalidation it knows of and forwards it *before* the
``run`` frame of the next call, so each call sees every write that completed before the
call started, like a read through the host. Writes made by the call itself drop the key
here first (read-your-writes). A write that completes elsewhere while a call runs may or
may not be seen by that call's later reads (the invalidation waits in the socket until the
next frame is read).

Only immutable answers are kept (``get``/``hget`` strings, ``exists``/``sismember``
booleans, ``smismember`` per member, and a small set's members as a frozenset when the host
sends them: ``sandbox.kvops.WHOLE_SET``), so a script can never mutate a cached value. The
cache belongs to one *scope* (store + namespace, chosen by the host): a call in another
scope empties it first, so no data crosses namespaces through a worker.
"""

from __future__ import annotations

from typing import Any

from sandbox.kvops import MEMBER_TAG, OPS, WHOLE_SET, Op

MISS = object()
MAX_ENTRIES = 50_000


class ReadCache:
    __slots__ = ("_entries", "_tags", "hits", "scope")

    def __init__(self) -> None:
        self.scope: str | None = None
        # script-level key -> {sub: value}; tag (Redis key) -> script-level key
        self._entries: dict[str, dict[tuple[Any, ...], Any]] = {}
        self._tags: dict[str, str] = {}
        self.hits = 0

    def __len__(self) -> int:
        n = 0
        for subs in self._entries.values():
            whole = subs.get(WHOLE_SET)
            n += len(subs) if whole is None else len(subs) + len(whole)
        return n

    def enter(self, scope: str) -> None:
        """Start a call in ``scope``; a different scope than the last call's empties the cache."""
        if scope != self.scope:
            self.clear()
            self.scope = scope

    def clear(self) -> None:
        self._entries.clear()
        self._tags.clear()

    def lookup(self, name: str, args: list[Any]) -> Any:
        op = OPS.get(name)
        if op is None or op.cache is None or not args or type(args[0]) is not str:
            return MISS
        subs = self._entries.get(args[0])
        if subs is None:
            return MISS
        whole = subs.get(WHOLE_SET) if op.cache == MEMBER_TAG else None
        if whole is not None:
            members = args[1] if len(args) > 1 else None
            if op.cached_per_member:
                if type(members) is not list or not all(type(m) is str for m in members):
                    return MISS  # the host's check words the refusal
                self.hits += 1
                return [m in whole for m in members]
            if type(members) is not str:
                return MISS
            self.hits += 1
            return members in whole
        if op.cached_per_member:  # smismember: one entry per member
            members = args[1] if len(args) > 1 else None
            if type(members) is not list:
                return MISS
            out = []
            for m in members:
                v = subs.get((op.cache, m), MISS) if type(m) is str else MISS
                if v is MISS:
                    return MISS
                out.append(v)
            self.hits += 1
            return out
        sub = _sub(op, args)
        v = MISS if sub is None else subs.get(sub, MISS)
        if v is not MISS:
            self.hits += 1
        return v

    def store(self, name: str, args: list[Any], value: Any, tag: Any, whole: Any = None) -> None:
        op = OPS.get(name)
        if op is None or op.cache is None or type(tag) is not str or not args or type(args[0]) is not str:
            return
        key = args[0]
        if whole is not None and op.cache == MEMBER_TAG:
            if type(whole) is not list or not all(type(m) is str for m in whole):
                return
            items = [(WHOLE_SET, frozenset(whole))]
            size = len(whole)
        elif op.cached_per_member:  # smismember: one entry per member
            members = args[1] if len(args) > 1 else None
            if type(members) is not list or type(value) is not list or len(value) != len(members):
                return
            items = [((op.cache, m), v) for m, v in zip(members, value, strict=True)
                     if type(m) is str and type(v) is bool]
            size = len(items)
        else:
            sub = _sub(op, args)
            if sub is None or not _scalar(value):
                return
            items = [(sub, value)]
            size = 1
        if len(self) + size > MAX_ENTRIES:
            self.clear()  # the host's record of our keys then over-approximates: harmless
        old = self._tags.get(tag)
        if old is not None and old != key:
            return  # one Redis key maps to one script key within a scope; refuse anything else
        self._tags[tag] = key
        self._entries.setdefault(key, {}).update(items)

    def forget_key(self, key: Any) -> None:
        """The call is about to write ``key``: its answers here are no longer trusted."""
        if type(key) is str:
            self._entries.pop(key, None)

    def invalidate(self, tags: Any) -> None:
        """An ``inv`` frame from the host: a list of Redis keys."""
        if type(tags) is not list:
            return
        for tag in tags:
            if type(tag) is str:
                key = self._tags.pop(tag, None)
                if key is not None:
                    self._entries.pop(key, None)


def _sub(op: Op, args: list[Any]) -> tuple[Any, ...] | None:
    """How one answer is keyed under its KV key (``Op.cache_sub``), or None for arguments of
    another shape (a key alone, or a key and one str)."""
    if len(op.args) == 2 and (len(args) != 2 or type(args[1]) is not str):
        return None
    return op.cache_sub(args)


def _scalar(value: Any) -> bool:
    return value is None or type(value) in (str, bool, int)
