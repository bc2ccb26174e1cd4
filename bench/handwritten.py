"""Hand-written alternatives to ScriptGate, for ``bench/bench_load.py``.

What a user would write instead of ScriptGate: one small Tornado app, the logic in plain
Python, no sandbox, no process boundary, no metrics, no per-request logging. The receivers
with logic answer the three callbacks the benchmark drives with the same logic as the
ready scripts ScriptGate runs (``scripts/``, ``bench/scripts/``) and the same reply bytes
(the benchmark checks that before it measures anything):

* ``callbackBeforeInviteJoinGroupCommand``: invitation blocklist: if any invitee is in the
  set ``blocklist:users`` -> reject 5001 naming the blocked ones, else the plain ack.
* ``callbackBeforeSendGroupMsgCommand``: keyword filter: the distinct lower-cased words of
  a text message (the first 1,000 in sorted order) against the set ``filter:words``, one
  ``SMISMEMBER``; any hit -> reject 5301, else the plain ack.
* ``callbackAfterSendGroupMsgCommand``: one ``INCR`` of a per-group counter, plain ack.
* anything else: plain ack.

Modes (``--mode``), one process each:

* ``fair-cached``: the best hand-written receiver we know how to write: ``fair`` plus an
  in-process cache of set-membership answers kept exact by Redis client-side tracking
  (a dedicated RESP3 connection, ``CLIENT TRACKING ON BCAST PREFIX`` for the two cached
  keys only, invalidations read with a non-blocking ``recv`` before every lookup and
  before a fetched answer is stored; an answer that raced an invalidation is not stored).
  Counters are not tracked, so ``INCR`` traffic costs no invalidations.
* ``fair``: async Tornado (``async def post``) + ``redis.asyncio`` (hiredis parser), ONE
  ``SMISMEMBER`` per invite (not one round trip per invitee).
* ``naive``: the old baseline: synchronous ``redis.Redis``, one ``SISMEMBER`` per invitee.
* ``echo``: parses the JSON body and answers the plain ack serialised by the JSON codec:
  the floor of any Tornado receiver that reads its request (no logic, no Redis; its
  replies to rejected requests differ, so it is not part of the reply check).
* ``noop``: answers the plain ack without parsing: the floor of any Tornado receiver.

JSON: orjson by default (the library ScriptGate uses, so the comparison is about the
architecture, not the JSON codec); ``--json stdlib`` uses ``json.loads``/``json.dumps``.

    python bench/handwritten.py --mode fair-cached --port 8001 --redis redis://127.0.0.1:6379/0 \\
        --kv-prefix scriptgate:kv:default:
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import hiredis
import orjson
import redis
import redis.asyncio
import tornado.httpserver
import tornado.web

ACK = b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'
INVITE = "callbackBeforeInviteJoinGroupCommand"
GROUPMSG = "callbackBeforeSendGroupMsgCommand"
AFTERMSG = "callbackAfterSendGroupMsgCommand"
BLOCKLIST = "blocklist:users"
FILTER = "filter:words"
CHUNK = 500  # as scripts/callbackBeforeInviteJoinGroupCommand.py
TEXT = 101
WORD = re.compile(r"\w+")
MODES = ["fair-cached", "fair", "naive", "echo", "noop"]

Loads = Callable[[bytes | str], Any]
Dumps = Callable[[Any], bytes]


def make_codec(kind: str) -> tuple[Loads, Dumps]:
    if kind == "orjson":
        return orjson.loads, orjson.dumps

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    return json.loads, dumps


# --- the logic of the ready scripts ----------------------------------------------------------


def deny(dumps: Dumps, code: int, msg: str, dlt: str) -> bytes:
    return dumps({"actionCode": 0, "errCode": code, "errMsg": msg, "errDlt": dlt, "nextCode": 1})


def invite_reply(dumps: Dumps, invited: list[str], flags: list[bool]) -> bytes:
    blocked = [u for u, b in zip(invited, flags, strict=True) if b]
    if blocked:
        return deny(dumps, 5001, "invitation refused", "blocked: " + ", ".join(blocked))
    return ACK


def message_words(loads: Loads, req: dict[str, Any]) -> list[str]:
    """The first 1,000 distinct lower-case words of a text message, sorted (as the script)."""
    if req.get("contentType") != TEXT:
        return []
    try:
        body = loads(req.get("content") or "{}")
    except ValueError:
        return []
    text = body.get("content") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return []
    if "\u0130" in text or "\u03a3" in text:  # see scripts/callbackBeforeSendGroupMsgCommand.py
        words = {w.lower() for w in WORD.findall(text)}
    else:
        words = set(WORD.findall(text.lower()))
    return sorted(words)[:1000]


BLOCKED_WORD = (5301, "message blocked", "the message contains a blocked word")


# --- naive: sync Redis, one SISMEMBER per invitee --------------------------------------------


class NaiveHandler(tornado.web.RequestHandler):
    def initialize(self, r: redis.Redis, prefix: str, loads: Loads, dumps: Dumps) -> None:
        self.r, self.prefix, self.loads, self.dumps = r, prefix, loads, dumps

    def post(self, path: str) -> None:
        command = path.rstrip("/").rsplit("/", 1)[-1]
        body = ACK
        if command == INVITE:
            invited = self.loads(self.request.body).get("invitedUserIDs") or []
            key = self.prefix + BLOCKLIST
            body = invite_reply(self.dumps, invited, [bool(self.r.sismember(key, u)) for u in invited])
        elif command == GROUPMSG:
            words = message_words(self.loads, self.loads(self.request.body))
            if words and any(self.r.smismember(self.prefix + FILTER, words)):
                body = deny(self.dumps, *BLOCKED_WORD)
        elif command == AFTERMSG:
            self.r.incr(self.prefix + "stats:msgs:" + (self.loads(self.request.body).get("groupID") or ""))
        self.set_header("Content-Type", "application/json")
        self.finish(body)


# --- fair and fair-cached: async Redis, one SMISMEMBER ---------------------------------------


class Direct:
    """Every membership question is one SMISMEMBER round trip."""

    def __init__(self, r: redis.asyncio.Redis) -> None:
        self.r = r

    async def smismember(self, key: str, members: list[str]) -> list[bool]:
        return [bool(x) for x in await self.r.smismember(key, members)]


def _command(*parts: str | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class TrackedMembers(Direct):
    """Membership answers of a few keys kept in process memory, exact thanks to Redis
    client-side tracking: a dedicated RESP3 connection subscribed (before the first read)
    to ``BCAST PREFIX <key>`` for each cached key gets an ``invalidate`` push for every
    write, sent by Redis before the writer's reply. It is drained synchronously (one
    non-blocking ``recv``) before every lookup and before a fetched answer is stored, and
    an answer fetched while its key was invalidated is used once but not kept."""

    MAX_ENTRIES = 200_000  # per key; then start over (a bound, never reached in the benchmark)

    def __init__(self, r: redis.asyncio.Redis, url: str, keys: list[str]) -> None:
        super().__init__(r)
        self.known: dict[str, dict[str, bool]] = {k: {} for k in keys}
        self.version = dict.fromkeys(keys, 0)  # +1 per invalidation of the key
        self.reader = hiredis.Reader()
        self.sock: socket.socket | None = self._subscribe(url, keys)

    @staticmethod
    def _subscribe(url: str, keys: list[str]) -> socket.socket:
        u = urlparse(url)
        sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        track: list[str | int] = ["CLIENT", "TRACKING", "ON", "BCAST"]
        for k in keys:
            track += ["PREFIX", k]
        sock.sendall(_command("HELLO", 3) + _command(*track))
        reader = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < 2:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("tracking connection closed")
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ConnectionError(f"tracking refused: {reply}")
        sock.setblocking(False)
        return sock

    def drain(self) -> bool:
        """Apply the invalidations received so far; False: the cache cannot be used."""
        sock = self.sock
        if sock is None:
            return False
        got = False
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            if not data:  # lost: stop caching for good (a benchmark does not reconnect)
                self.sock = None
                for k in self.known:
                    self.known[k] = {}
                    self.version[k] += 1
                return False
            self.reader.feed(data)
            got = True
        while got and (msg := self.reader.gets()) is not False:
            if isinstance(msg, hiredis.PushNotification) and msg[0] == b"invalidate":
                names = list(self.known) if msg[1] is None else [k.decode() for k in msg[1]]
                for k in names:
                    if k in self.known:
                        self.known[k] = {}
                        self.version[k] += 1
        return True

    async def smismember(self, key: str, members: list[str]) -> list[bool]:
        if not self.drain() or key not in self.known:
            return await super().smismember(key, members)
        known = self.known[key]
        missing = list(dict.fromkeys(m for m in members if m not in known))
        if not missing:
            return [known[m] for m in members]
        version = self.version[key]
        flags = [bool(x) for x in await self.r.smismember(key, missing)]
        fetched = dict(zip(missing, flags, strict=True))
        if self.drain() and self.version[key] == version:
            if len(known) + len(fetched) > self.MAX_ENTRIES:
                known.clear()
            known.update(fetched)
        return [fetched[m] if m in fetched else known[m] for m in members]


class FairHandler(tornado.web.RequestHandler):
    def initialize(self, members: Direct, r: redis.asyncio.Redis, prefix: str, loads: Loads, dumps: Dumps) -> None:
        self.members, self.r, self.prefix, self.loads, self.dumps = members, r, prefix, loads, dumps

    async def post(self, path: str) -> None:
        command = path.rstrip("/").rsplit("/", 1)[-1]
        body = ACK
        if command == INVITE:
            invited = self.loads(self.request.body).get("invitedUserIDs") or []
            if invited:
                key = self.prefix + BLOCKLIST
                flags: list[bool] = []
                for start in range(0, len(invited), CHUNK):
                    flags += await self.members.smismember(key, invited[start:start + CHUNK])
                body = invite_reply(self.dumps, invited, flags)
        elif command == GROUPMSG:
            words = message_words(self.loads, self.loads(self.request.body))
            if words and any(await self.members.smismember(self.prefix + FILTER, words)):
                body = deny(self.dumps, *BLOCKED_WORD)
        elif command == AFTERMSG:
            await self.r.incr(self.prefix + "stats:msgs:" + (self.loads(self.request.body).get("groupID") or ""))
        self.set_header("Content-Type", "application/json")
        self.finish(body)


# --- floors ----------------------------------------------------------------------------------


class NoopHandler(tornado.web.RequestHandler):
    def post(self, path: str) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(ACK)


class EchoHandler(tornado.web.RequestHandler):
    def initialize(self, loads: Loads, dumps: Dumps) -> None:
        self.loads, self.dumps = loads, dumps

    def post(self, path: str) -> None:
        self.loads(self.request.body)
        self.set_header("Content-Type", "application/json")
        self.finish(self.dumps({"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0}))


def make_app(args: argparse.Namespace) -> tornado.web.Application:
    loads, dumps = make_codec(args.json)
    if args.mode == "noop":
        return tornado.web.Application([(r"/(.*)", NoopHandler)])
    if args.mode == "echo":
        return tornado.web.Application([(r"/(.*)", EchoHandler, {"loads": loads, "dumps": dumps})])
    if args.mode == "naive":
        r = redis.Redis.from_url(args.redis, decode_responses=True)
        r.ping()
        return tornado.web.Application([(r"/(.*)", NaiveHandler, {"r": r, "prefix": args.kv_prefix,
                                                                  "loads": loads, "dumps": dumps})])
    ar = redis.asyncio.Redis.from_url(args.redis, decode_responses=True)
    members = (TrackedMembers(ar, args.redis, [args.kv_prefix + BLOCKLIST, args.kv_prefix + FILTER])
               if args.mode == "fair-cached" else Direct(ar))
    return tornado.web.Application([(r"/(.*)", FairHandler, {"members": members, "r": ar, "prefix": args.kv_prefix,
                                                             "loads": loads, "dumps": dumps})])


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=MODES, default="fair-cached")
    p.add_argument("--redis", help="redis:// URL (every mode but echo and noop)")
    p.add_argument("--kv-prefix", default="", help="prefix of the KV keys (the same keys ScriptGate's scripts use)")
    p.add_argument("--json", choices=["orjson", "stdlib"], default="orjson")
    p.add_argument("--noop", action="store_true", help="the same as --mode noop")
    args = p.parse_args(argv)
    if args.noop:
        args.mode = "noop"
    if args.mode not in ("echo", "noop") and not args.redis:
        p.error(f"--mode {args.mode} needs --redis")
    app = make_app(args)
    if args.mode not in ("echo", "noop"):
        async with redis.asyncio.Redis.from_url(args.redis) as check:
            await check.ping()
    server = tornado.httpserver.HTTPServer(app)
    server.listen(args.port, args.host)
    print(f"handwritten: ready on http://{args.host}:{args.port} (mode {args.mode}, json: {args.json})",
          file=sys.stderr, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
