"""A hostile (or merely broken) stand-in for ``sandbox.worker.main``, for tests/test_pool_hostile.py.

    python tests/pool_fake_worker.py MODE --fd N --memory-mb M --parent PID

It speaks just enough of ``sandbox.protocol`` to become ready, then misbehaves according
to MODE when the host sends a call. The host must survive every mode.

MODE ``scripted`` takes its orders from each call's payload (the callback request), so one
pool can play a different hostile worker per request (tests/test_dispatch_hostile.py):
``{"hostile": {"r": R}}`` answers ``done`` with result ``R`` verbatim, ``{"hostile":
"garbage"}`` sends a frame that is not JSON, ``{"hostile": "silent"}`` never answers,
``{"hostile": "exit"}`` dies mid-call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import protocol

HOSTILE_RESULTS = {
    "deny_errcode_low": ("deny", {"errCode": 99, "errMsg": "too low", "errDlt": "d"}),
    "deny_errcode_zero": ("deny", {"errCode": 0, "errMsg": "zero", "errDlt": ""}),
    "deny_errcode_high": ("deny", {"errCode": 2**31, "errMsg": "too high", "errDlt": ""}),
    "deny_errcode_text": ("deny", {"errCode": "5001", "errMsg": "text code", "errDlt": ""}),
    "deny_errcode_missing": ("deny", {"errMsg": "no code"}),
    "deny_long_errmsg": ("deny", {"errCode": 5001, "errMsg": "m" * 100_000, "errDlt": "d" * 5000}),
    "deny_errmsg_types": ("deny", {"errCode": 5001, "errMsg": {"nested": 1}, "errDlt": 7}),
    "modify_common_fields": ("modify", {"nextCode": 1, "errCode": 0}),
    "modify_wrong_type": ("modify", {"invitedUserIDs": [1, 2]}),
}


def main() -> None:
    mode = sys.argv[1]
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    sock = socket.socket(fileno=fd)
    chan = protocol.BlockingChannel(sock)
    if mode == "no_ready":
        chan.recv()  # until EOF
        return
    if mode == "fatal":
        chan.send({"t": "fatal", "msg": "cannot start"})
        return
    if mode == "unsolicited":
        chan.send({"t": "ready", "pid": os.getpid(), "confine": {}})
        chan.send({"t": "kv", "id": 0, "op": "get", "args": ["k"]})
        chan.recv()
        return
    chan.send({"t": "ready", "pid": os.getpid(), "confine": {"fake": True}})
    while True:
        msg = chan.recv()
        if msg is None:
            return
        head, body = msg
        call_id = head.get("id")
        if mode == "echo":
            if head["t"] == "check":
                chan.send({"t": "checked", "id": call_id, "issues": []})
            else:
                chan.send({"t": "done", "id": call_id, "cached": True, "cpu": 0.0,
                           "r": {"verdict": "modify", "fields": {"echo": body.decode()}, "error": None, "logs": []}})
        elif mode == "scripted":
            order = protocol.orjson.loads(body).get("hostile") if head["t"] != "check" else None
            if head["t"] == "check":
                chan.send({"t": "checked", "id": call_id, "issues": []})
            elif isinstance(order, dict):
                chan.send({"t": "done", "id": call_id, "cached": False, "cpu": 0.0, "r": order["r"]})
            elif order == "garbage":
                sock.sendall(protocol.HEADER.pack(12, 0) + b"not json {{{")
            elif order == "exit":
                os._exit(3)
            elif order != "silent":
                raise SystemExit(f"unknown order {order!r}")
        elif mode == "garbage":
            sock.sendall(b"\x00\x00\x00\x05\x00\x00\x00\x00hello")
        elif mode == "oversize":
            # Announce a 1 GiB frame; the host must refuse before buffering it.
            sock.sendall(protocol.HEADER.pack(1 << 30, 0) + b"x" * 65536)
        elif mode == "kv_flood":
            frames = b"".join(
                protocol.encode({"t": "kv", "id": call_id, "op": "get", "args": [f"k{i}"]}) for i in range(50)
            )
            sock.sendall(frames)
        elif mode == "nr_flood":
            # Writes "not waited for" far past the KV budget, as fast as the socket takes them,
            # then a done, then a message after it.
            frame = b"".join(
                protocol.encode({"t": "kv", "id": call_id, "op": "incr", "args": [f"k{i}", 1, None], "nr": True})
                for i in range(100)
            )
            with contextlib.suppress(OSError):
                for _ in range(100):
                    sock.sendall(frame)
                chan.send({"t": "done", "id": call_id, "cached": True, "cpu": 0.0,
                           "r": {"verdict": "allow", "fields": {}, "error": None, "logs": []}})
        elif mode == "nr_then_extra":
            chan.send({"t": "kv", "id": call_id, "op": "incr", "args": ["k", 1, None], "nr": True})
            chan.send({"t": "kv", "id": call_id, "op": "get", "args": ["k"], "nr": True})
            chan.send({"t": "done", "id": call_id, "cached": True, "cpu": 0.0,
                       "r": {"verdict": "allow", "fields": {}, "error": None, "logs": []}})
            chan.send({"t": "done", "id": call_id, "cached": True, "cpu": 0.0,
                       "r": {"verdict": "allow", "fields": {}, "error": None, "logs": []}})
        elif mode == "kv_over_budget":
            for i in range(10_000):
                chan.send({"t": "kv", "id": call_id, "op": "incr", "args": [f"k{i}", 1, None]})
                if chan.recv() is None:
                    return
        elif mode == "bad_kv":
            replies = []
            for op, args in (
                ("flushall", []),
                ("get", ["bad\nkey"]),
                ("set", ["k", {"nested": "object"}, None]),
                ("get", ["k", "extra"]),
                ("get", "notalist"),
                ("get", ["fine"]),
            ):
                chan.send({"t": "kv", "id": call_id, "op": op, "args": args})
                reply = chan.recv()
                assert reply is not None
                replies.append(reply[0])
            chan.send({"t": "done", "id": call_id, "cached": False, "cpu": 0.0,
                       "r": {"verdict": "allow", "fields": {}, "error": None,
                             "logs": [protocol.orjson.dumps(r).decode() for r in replies]}})
        elif mode == "bad_result":
            chan.send({"t": "done", "id": call_id, "r": {"verdict": "allow", "fields": [1, 2], "error": None}})
        elif mode == "bad_verdict":
            chan.send({"t": "done", "id": call_id, "r": {"verdict": "error", "fields": {}, "error": None}})
        elif mode in HOSTILE_RESULTS:
            # Well-formed messages carrying results a real worker never sends: the host's
            # re-check (server/service/callbacks.py judge) must still send OpenIM a valid reply.
            verdict, fields = HOSTILE_RESULTS[mode]
            chan.send({"t": "done", "id": call_id, "r": {"verdict": verdict, "fields": fields, "error": None,
                                                         "logs": []}})
        elif mode == "wrong_id":
            chan.send({"t": "done", "id": call_id + 1,
                       "r": {"verdict": "allow", "fields": {}, "error": None, "logs": []}})
        elif mode == "with_body":
            chan.send({"t": "done", "id": call_id, "r": {"verdict": "allow", "fields": {}, "error": None,
                                                         "logs": []}}, b"surprise")
        elif mode == "exit_mid_call":
            os._exit(3)
        elif mode == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif mode == "close_and_linger":
            sock.shutdown(socket.SHUT_RDWR)
            signal.pause()
        elif mode == "silent":
            pass  # never answers; the host's deadline must fire
        else:
            raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
