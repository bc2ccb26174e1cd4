"""The hand-written alternative to ScriptGate, for ``bench/bench_load.py``.

What a user would write instead of ScriptGate: one small Tornado app, the logic in plain
Python, a synchronous ``redis.Redis`` client (hiredis parser), no sandbox, no process
boundary, no metrics, no per-request logging. It answers the same three callbacks the
benchmark drives, with the same logic as the scripts ScriptGate runs and the same reply
bytes (the benchmark checks that before it measures anything):

* ``callbackBeforeInviteJoinGroupCommand``: invitation blocklist, one ``SISMEMBER`` per
  invitee (the obvious way to write it); all blocked -> reject 5001, otherwise continue
  with ``invitedUserIDs`` narrowed to the allowed ones (as ``scripts/`` does).
* ``callbackBeforeSendGroupMsgCommand``: keyword filter: the words of a text message,
  lower-cased and de-duplicated, checked with one ``SMISMEMBER`` (as ``scripts/`` does).
* ``callbackAfterSendGroupMsgCommand``: one ``INCR`` of a per-group counter, plain ack.
* anything else: plain ack.

``--noop`` answers every callback with the plain ack without parsing it or touching Redis:
the floor of any Tornado receiver on this machine (the benchmark's latency phase reports it).

JSON: orjson by default (the same library ScriptGate uses, so the comparison is about the
architecture, not the JSON codec); ``--json stdlib`` uses ``json.loads``/``json.dumps``.

    python bench/handwritten.py --port 8001 --redis redis://127.0.0.1:6379/0 --kv-prefix scriptgate:kv:default:
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import orjson
import redis
import tornado.httpserver
import tornado.web

ACK = b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'
TEXT = 101
WORD = re.compile(r"\w+")


def make_codec(kind: str) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    if kind == "orjson":
        return orjson.loads, orjson.dumps

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    return json.loads, dumps


def reply(code: int = 0, msg: str = "", dlt: str = "", reject: bool = False, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"actionCode": 0, "errCode": code, "errMsg": msg, "errDlt": dlt,
                            "nextCode": 1 if reject else 0}
    body.update(fields)
    return body


class NoopHandler(tornado.web.RequestHandler):
    def post(self, path: str) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(ACK)


class CallbackHandler(tornado.web.RequestHandler):
    def initialize(self, r: redis.Redis, prefix: str, loads: Callable[[bytes], Any],
                   dumps: Callable[[Any], bytes]) -> None:
        self.r = r
        self.prefix = prefix
        self.loads = loads
        self.dumps = dumps

    def post(self, path: str) -> None:
        command = path.rstrip("/").rsplit("/", 1)[-1]
        req = self.loads(self.request.body)
        if command == "callbackBeforeInviteJoinGroupCommand":
            body = self.invite(req)
        elif command == "callbackBeforeSendGroupMsgCommand":
            body = self.keyword_filter(req)
        elif command == "callbackAfterSendGroupMsgCommand":
            self.r.incr(self.prefix + "stats:msgs:" + str(req.get("groupID", "")))
            body = ACK
        else:
            body = ACK
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    def invite(self, req: dict[str, Any]) -> bytes:
        invited = req.get("invitedUserIDs") or []
        key = self.prefix + "blocklist:users"
        blocked = [u for u in invited if self.r.sismember(key, u)]
        if invited and len(blocked) == len(invited):
            return self.dumps(reply(5001, "invitation refused", "blocked: " + ", ".join(blocked), reject=True))
        if not invited:
            return ACK
        return self.dumps(reply(invitedUserIDs=[u for u in invited if u not in blocked]))

    def keyword_filter(self, req: dict[str, Any]) -> bytes:
        text = ""
        if req.get("contentType") == TEXT:
            try:
                content = self.loads(req.get("content") or "{}")
            except ValueError:
                content = None
            if isinstance(content, dict) and isinstance(content.get("content"), str):
                text = content["content"]
        words = sorted({w.lower() for w in WORD.findall(text)})[:1000]
        if words and any(self.r.smismember(self.prefix + "filter:words", words)):
            return self.dumps(reply(5301, "message blocked", "the message contains a blocked word", reject=True))
        return ACK


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis", required=True, help="redis:// URL")
    p.add_argument("--kv-prefix", default="", help="prefix of the KV keys (the same keys ScriptGate's scripts use)")
    p.add_argument("--json", choices=["orjson", "stdlib"], default="orjson")
    p.add_argument("--noop", action="store_true", help="answer the plain ack to everything (a floor)")
    args = p.parse_args(argv)
    r = redis.Redis.from_url(args.redis, decode_responses=True)
    r.ping()
    loads, dumps = make_codec(args.json)
    if args.noop:
        app = tornado.web.Application([(r"/(.*)", NoopHandler)])
    else:
        app = tornado.web.Application(
            [(r"/(.*)", CallbackHandler, {"r": r, "prefix": args.kv_prefix, "loads": loads, "dumps": dumps})]
        )
    server = tornado.httpserver.HTTPServer(app)
    server.listen(args.port, args.host)
    mode = "no-op" if args.noop else f"json: {args.json}"
    print(f"handwritten: ready on http://{args.host}:{args.port} ({mode})", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
