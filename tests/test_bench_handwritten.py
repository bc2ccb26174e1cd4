"""The hand-written baselines of bench/bench_load.py must be honest: fair-cached's
in-process cache is exact (a write by any client is seen by the next read), and the
receivers' logic is the ready scripts' (bench_load checks reply bytes on real traffic too)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import handwritten  # bench/handwritten.py, found through the sys.path entry above


def test_fair_cached_is_exact_under_writes(redis_standalone: Any, store_prefix: str) -> None:
    raw = redis_standalone.client()
    key, other = f"{store_prefix}:bl", f"{store_prefix}:count"

    async def scenario() -> None:
        r = redis.asyncio.Redis.from_url(redis_standalone.url, decode_responses=True)
        members = handwritten.TrackedMembers(r, redis_standalone.url, [key])
        try:
            raw.sadd(key, "x")
            assert await members.smismember(key, ["x", "y"]) == [True, False]
            assert members.known[key] == {"x": True, "y": False}  # cached
            for i in range(200):
                m = f"u{i}"
                assert await members.smismember(key, [m, "x"]) == [False, True]
                raw.sadd(key, m)
                assert await members.smismember(key, [m]) == [True]
                raw.srem(key, m)
                assert await members.smismember(key, ["x", m]) == [True, False]
            # Only the cached key is tracked: counters cost no invalidation.
            version = members.version[key]
            for _ in range(50):
                raw.incr(other)
            await r.ping()
            members.drain()
            assert members.version[key] == version and members.known[key]
            raw.flushdb()
            assert await members.smismember(key, ["x"]) == [False]
        finally:
            await r.aclose()
            if members.sock is not None:
                members.sock.close()

    asyncio.run(scenario())


def test_receiver_logic_is_the_scripts() -> None:
    dumps = orjson.dumps
    assert handwritten.invite_reply(dumps, ["a", "b"], [False, False]) == handwritten.ACK
    assert orjson.loads(handwritten.invite_reply(dumps, ["a", "b", "c"], [True, False, True])) == {
        "actionCode": 0, "errCode": 5001, "errMsg": "invitation refused", "errDlt": "blocked: a, c", "nextCode": 1}
    req = {"contentType": 101, "content": orjson.dumps({"content": "Hello HELLO world, \u0130stanbul"}).decode()}
    assert handwritten.message_words(orjson.loads, req) == sorted({"hello", "world", "i\u0307stanbul"})
    assert handwritten.message_words(orjson.loads, {"contentType": 102, "content": "{}"}) == []
