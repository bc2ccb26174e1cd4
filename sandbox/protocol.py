"""Framing and messages between the host (``sandbox.host.pool``) and a worker (``sandbox.worker.main``).

Wire format, both directions, over a SOCK_STREAM socketpair::

    u32 big-endian header length | u32 big-endian body length | header | body

``header`` is one orjson-encoded JSON object with a string ``"t"`` (the message type).
``body`` is raw bytes that are not re-encoded: the request payload JSON the host already
validated rides in the ``run`` frame as-is (so a 100 KB payload is never parsed and dumped
again on the host side). Every other message has an empty body.

Host -> worker:
    run     {"t","id","sha","b": budgets, "src"?: source, "cs"?: scope}  body = payload JSON
            ("src" is sent only when the host believes the worker lacks that sha; "cs" names
            the store + namespace whose kept KV answers this call may use)
    check   {"t","id","src","cpu_s"}
    kvr     {"t","id","ok": value, "c"?: redis key, "w"?: [members]}
            | {"t","id","err": "kv"|"unavailable","msg"}
            ("c": the worker may keep this answer until an "inv" names that key, "w": and the
            whole set of members that key holds; see readcache)
    inv     {"t","k": [redis keys]} | {"t","all": true}   drop kept answers (any time)
    probe   {"t","id","name"}            only honoured by workers started with --test-hooks
Worker -> host:
    ready   {"t","pid","confine": report}
    fatal   {"t","msg"}                  startup failed; the worker exits
    need    {"t","id"}                   the worker lacks the sha: resend with "src"
    kv      {"t","id","op","args","nr"?: true}   one KV call; the worker blocks until "kvr",
                                         except for "nr" (a write it does not wait for: no
                                         "kvr" comes; see sandbox.policy.unawaited_writes)
    done    {"t","id","r": RunResult.to_wire(), "cached": bool, "cpu": seconds used,
             "retire"?: true}           the worker's state is unknown now: replace it
    checked {"t","id","issues": [[line, col, message], ...]}
    probed  {"t","id","r": value}

The worker is untrusted: the host bounds frame sizes (``MAX_FROM_WORKER``) and checks every
message's shape before acting on it. The worker trusts the host but still bounds what it
accepts so a host bug cannot make it allocate without limit.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import orjson

HEADER = struct.Struct(">II")
HEADER_SIZE = HEADER.size

# A worker's biggest legitimate frame is a result (bounded by Budgets.result_bytes, 1 MiB by
# default, plus logs) or a KV call (<= 1000 members x value size). 8 MiB leaves room for
# raised budgets while keeping a hostile worker from making the host buffer gigabytes.
MAX_FROM_WORKER = 8 * 1024 * 1024
# Sources and payloads are bounded by the HTTP layer; this is only a backstop.
MAX_FROM_HOST = 64 * 1024 * 1024

RECV_CHUNK = 65536

# Message types
RUN, CHECK, KVR, PROBE, INV = "run", "check", "kvr", "probe", "inv"
READY, FATAL, NEED, KV, DONE, CHECKED, PROBED = "ready", "fatal", "need", "kv", "done", "checked", "probed"

# KV error classes carried in "kvr" frames
KV_ERR, KV_UNAVAILABLE = "kv", "unavailable"

# Exit codes a worker uses so the host can classify a death it did not cause.
EXIT_OOM = 71  # MemoryError outside a script (e.g. the result did not fit)
EXIT_PROTOCOL = 72  # the host sent something unexpected
EXIT_FATAL = 73  # startup failed

# Lifetime CPU cap of one worker (hard RLIMIT_CPU, set by sandbox.worker.confine): a per-call
# soft limit can never be raised past it once root is gone. The host recycles a worker at
# half of it (sandbox.host.recycling), long before it could cut a legitimate call short.
LIFETIME_CPU_S = 3600

# Compiled scripts a worker keeps (least recently used first out); the host's record of what
# a worker knows follows the same rule, so it resends a source only when the worker lacks it.
SCRIPT_CACHE_SIZE = 64


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame or message."""


def _plain(value: Any) -> Any:
    # KV results may hold sets (smembers); everything else orjson does not know is refused.
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not plain data")


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = orjson.dumps(header, default=_plain)
    return HEADER.pack(len(head), len(body)) + head + body


def encode_raw(head: bytes, body: bytes = b"") -> bytes:
    """Frame an already-encoded header (lets the host splice precomputed JSON)."""
    return HEADER.pack(len(head), len(body)) + head + body


def parse_header(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError("frame header is not JSON") from None
    if type(msg) is not dict or type(msg.get("t")) is not str:
        raise ProtocolError("frame header is not a message object")
    return msg


class FrameDecoder:
    """Incremental decoder for a non-blocking reader (the host's asyncio protocol).

    ``feed`` returns the complete frames in the data so far as (message, body) pairs and
    keeps any partial frame. A length over ``limit`` raises ProtocolError *before* the bytes
    arrive, so a peer cannot make us buffer more than ``limit`` (+ one read).
    """

    __slots__ = ("_buf", "_limit")

    def __init__(self, limit: int = MAX_FROM_WORKER) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes | memoryview) -> list[tuple[dict[str, Any], bytes]]:
        """``data`` may be a view of a buffer the caller reuses: nothing here keeps it."""
        if not self._buf and len(data) >= HEADER_SIZE:
            # Fast path: the usual read is exactly one whole frame with no body.
            hlen, blen = HEADER.unpack_from(data)
            if blen == 0 and 0 < hlen <= self._limit and len(data) == HEADER_SIZE + hlen:
                return [(parse_header(data[HEADER_SIZE:]), b"")]
        if self._buf:
            buf = self._buf
            buf += data
            # Copy out only once the first frame is complete: a big frame arriving in
            # many reads must not be re-copied on each one.
            if len(buf) < HEADER_SIZE:
                return []
            hlen, blen = HEADER.unpack_from(buf)
            if hlen == 0 or hlen + blen > self._limit:
                raise ProtocolError(f"frame of {hlen + blen} bytes exceeds the limit")
            if len(buf) < HEADER_SIZE + hlen + blen:
                return []
            data = bytes(buf)
            buf.clear()
        out: list[tuple[dict[str, Any], bytes]] = []
        pos, end = 0, len(data)
        view = memoryview(data)
        while end - pos >= HEADER_SIZE:
            hlen, blen = HEADER.unpack_from(data, pos)
            if hlen == 0 or hlen + blen > self._limit:
                raise ProtocolError(f"frame of {hlen + blen} bytes exceeds the limit")
            stop = pos + HEADER_SIZE + hlen + blen
            if stop > end:
                break
            start = pos + HEADER_SIZE
            msg = parse_header(view[start : start + hlen])
            body = bytes(view[start + hlen : stop]) if blen else b""
            out.append((msg, body))
            pos = stop
        if pos < end:
            self._buf += view[pos:]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


class BlockingChannel:
    """The worker's side: blocking reads and writes on one connected socket.

    ``spin_us``: before blocking in ``recv(spin=True)``, poll the socket (non-blocking)
    for up to this long. On virtual machines a vCPU that goes idle halts, and waking it
    (an IPI and a VM entry) costs tens of microseconds per message; the host usually
    answers a KV request within that window, so a short spin keeps the round trip hot.
    Only KV waits spin: the next call's arrival is unpredictable, and spinning for it
    burns CPU that other workers need under load.
    """

    def __init__(self, sock: Any, limit: int = MAX_FROM_HOST, spin_us: int = 0) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._rbuf = bytearray(RECV_CHUNK)
        self._rview = memoryview(self._rbuf)
        self._limit = limit
        self._spin_ns = spin_us * 1000

    def _recv_some(self, spin: bool) -> int:
        # recv_into a buffer kept for the worker's life: sock.recv(n) would allocate (and
        # for large n, mmap and munmap) n bytes on every call.
        if spin and self._spin_ns:
            end = time.perf_counter_ns() + self._spin_ns
            recv_into = self._sock.recv_into
            while True:
                try:
                    return recv_into(self._rbuf, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if time.perf_counter_ns() >= end:
                        break
        return self._sock.recv_into(self._rbuf)

    def _fill(self, need: int, spin: bool = False) -> bool:
        buf = self._buf
        while len(buf) < need:
            n = self._recv_some(spin)
            if not n:
                return False
            buf += self._rview[:n]
        return True

    def recv(self, spin: bool = False) -> tuple[dict[str, Any], bytes] | None:
        """Next message, or None on a clean EOF from the host. ``spin``: poll first (only
        worth it when an answer is due within microseconds, e.g. a KV reply)."""
        if not self._fill(HEADER_SIZE, spin):
            if self._buf:
                raise ProtocolError("truncated frame")
            return None
        hlen, blen = HEADER.unpack_from(self._buf)
        if hlen == 0 or hlen + blen > self._limit:
            raise ProtocolError("frame too large")
        end = HEADER_SIZE + hlen + blen
        if not self._fill(end, spin):
            raise ProtocolError("truncated frame")
        buf = self._buf
        view = memoryview(buf)
        try:
            msg = parse_header(view[HEADER_SIZE : HEADER_SIZE + hlen])
            body = bytes(view[HEADER_SIZE + hlen : end]) if blen else b""
        finally:
            view.release()
        del buf[:end]
        return msg, body

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self._sock.sendall(encode(header, body))

    def send_raw(self, frame: bytes) -> None:
        self._sock.sendall(frame)
