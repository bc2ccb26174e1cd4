"""An in-memory KVPort with the semantics of the store's kv ops, for in-process script tests."""

from __future__ import annotations

from typing import Any

from sandbox.api import KVError


class FakeKV:
    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})
        self.ttls: dict[str, int] = {}
        self.calls: list[tuple[str, list[Any]]] = []

    def _typed(self, key: str, kind: type, create: bool = False) -> Any:
        value = self.data.get(key)
        if value is None:
            if not create:
                return kind()
            value = self.data[key] = kind()
        if not isinstance(value, kind):
            raise KVError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return value

    def call(self, op: str, args: list[Any]) -> Any:
        self.calls.append((op, args))
        key = args[0]
        if op == "get":
            v = self.data.get(key)
            if v is not None and not isinstance(v, str):
                raise KVError("WRONGTYPE")
            return v
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
            value = int(self.data.get(key, "0")) + args[1]
            self.data[key] = str(value)
            if args[2] and key not in self.ttls:
                self.ttls[key] = args[2]
            return value
        if op == "expire":
            self.ttls[key] = args[1]
            return key in self.data
        if op == "ttl":
            return self.ttls.get(key, -1) if key in self.data else -2
        if op == "sadd":
            s = self._typed(key, set, True)
            before = len(s)
            s.update(args[1])
            return len(s) - before
        if op == "srem":
            s = self._typed(key, set)
            n = len([m for m in args[1] if m in s])
            s.difference_update(args[1])
            return n
        if op == "sismember":
            return args[1] in self._typed(key, set)
        if op == "smismember":
            s = self._typed(key, set)
            return [m in s for m in args[1]]
        if op == "smembers":
            return sorted(self._typed(key, set))
        if op == "scard":
            return len(self._typed(key, set))
        if op == "hget":
            return self._typed(key, dict).get(args[1])
        if op == "hset":
            h = self._typed(key, dict, True)
            added = len([f for f in args[1] if f not in h])
            h.update(args[1])
            return added
        if op == "hdel":
            h = self._typed(key, dict)
            return len([h.pop(f) for f in args[1] if f in h])
        if op == "hgetall":
            return dict(self._typed(key, dict))
        if op == "hincrby":
            h = self._typed(key, dict, True)
            h[args[1]] = str(int(h.get(args[1], "0")) + args[2])
            return int(h[args[1]])
        if op in ("lpush", "rpush"):
            li = self._typed(key, list, True)
            for v in args[1]:
                if op == "lpush":
                    li.insert(0, v)
                else:
                    li.append(v)
            return len(li)
        if op == "lrange":
            li = self._typed(key, list)
            start, stop = args[1], args[2]
            stop = len(li) if stop == -1 else stop + 1
            return li[start:stop]
        if op == "ltrim":
            li = self._typed(key, list)
            stop = len(li) if args[2] == -1 else args[2] + 1
            self.data[key] = li[args[1]:stop]
            return True
        if op == "llen":
            return len(self._typed(key, list))
        raise KVError(f"unknown op {op}")
