"""A dict-backed KVPort for sandbox tests: the real semantics of the ops, no Redis."""

from __future__ import annotations

from typing import Any

from sandbox.api import Budgets, KVRefused, KVUnavailable, RunResult
from sandbox.worker.runtime import compile_script, execute


class DictKV:
    """Implements ``call(op, args)`` over plain dicts. ``down=True`` simulates an outage."""

    def __init__(self, data: dict[str, Any] | None = None, down: bool = False) -> None:
        self.data: dict[str, Any] = dict(data or {})
        self.ttls: dict[str, int] = {}
        self.calls: list[tuple[str, list[Any]]] = []
        self.down = down

    def _get(self, key: str, kind: type, create: bool = False) -> Any:
        value = self.data.get(key)
        if value is None:
            value = kind()
            if create:
                self.data[key] = value
        elif type(value) is not kind:
            raise KVRefused("WRONGTYPE Operation against a key holding the wrong kind of value")
        return value

    def call(self, op: str, args: list[Any]) -> Any:
        self.calls.append((op, args))
        if self.down:
            raise KVUnavailable("connection refused: redis://:secret@10.0.0.5:6379")
        key = args[0]
        if op == "get":
            value = self.data.get(key)
            if value is not None and type(value) is not str:
                raise KVRefused("WRONGTYPE Operation against a key holding the wrong kind of value")
            return value
        if op == "set":
            self.data[key] = args[1]
            if args[2]:
                self.ttls[key] = args[2]
            return True
        if op == "delete":
            return int(self.data.pop(key, None) is not None)
        if op == "exists":
            return key in self.data
        if op == "incr":
            value = int(self._get(key, str) or 0) + args[1]
            if key not in self.data and args[2]:
                self.ttls[key] = args[2]
            self.data[key] = str(value)
            return value
        if op == "expire":
            self.ttls[key] = args[1]
            return key in self.data
        if op == "ttl":
            return self.ttls.get(key, -1) if key in self.data else -2
        if op in ("sadd", "srem"):
            s = self._get(key, set, create=True)
            before = len(s)
            if op == "sadd":
                s.update(args[1])
            else:
                s.difference_update(args[1])
            return abs(len(s) - before)
        if op == "sismember":
            return args[1] in self._get(key, set)
        if op == "smismember":
            s = self._get(key, set)
            return [m in s for m in args[1]]
        if op == "smembers":
            return sorted(self._get(key, set))
        if op == "scard":
            return len(self._get(key, set))
        if op == "hget":
            return self._get(key, dict).get(args[1])
        if op == "hset":
            h = self._get(key, dict, create=True)
            added = sum(1 for k in args[1] if k not in h)
            h.update(args[1])
            return added
        if op == "hdel":
            h = self._get(key, dict)
            return sum(1 for f in args[1] if h.pop(f, None) is not None)
        if op == "hgetall":
            return dict(self._get(key, dict))
        if op == "hincrby":
            h = self._get(key, dict, create=True)
            h[args[1]] = str(int(h.get(args[1], "0")) + args[2])
            return int(h[args[1]])
        if op in ("lpush", "rpush"):
            lst = self._get(key, list, create=True)
            if op == "lpush":
                lst[:0] = list(reversed(args[1]))
            else:
                lst.extend(args[1])
            return len(lst)
        if op == "lrange":
            lst = self._get(key, list)
            stop = None if args[2] == -1 else args[2] + 1
            return lst[args[1]:stop]
        if op == "ltrim":
            lst = self._get(key, list)
            stop = None if args[2] == -1 else args[2] + 1
            lst[:] = lst[args[1]:stop]
            return True
        if op == "llen":
            return len(self._get(key, list))
        raise KVRefused(f"unknown op {op}")


def run(source: str, payload: Any = None, kv: Any = None, **budgets: int) -> RunResult:
    """Compile and execute ``source`` once with default (or overridden) budgets."""
    script = compile_script(source)
    return execute(script, {} if payload is None else payload, kv if kv is not None else DictKV(),
                   Budgets().merged(budgets))


def handler(body: str) -> str:
    """Wrap statements as the body of ``def handle(req):``."""
    lines = body.strip("\n").splitlines()
    return "def handle(req):\n" + "".join(f"    {line}\n" for line in lines)
