"""Open-loop, fixed-rate HTTP load generator (wrk2-style; wrk2 is not packaged by Debian).

    python bench/openloop.py --port P --requests FILE --rate 1500 --duration 15 [--warmup 2]

Requests are *scheduled* at exactly ``rate`` per second, whatever the server does. A request
that waits for a free connection because the server is slow is charged for that wait: its
latency counts from its scheduled time (no coordinated omission). A request that found a
free connection counts from when it was written, so the generator's own timer lateness
(asyncio sleeps with ~1 ms granularity) is not blamed on the server; ``strict_*`` counts
every request from its scheduled time. Up to ``--connections`` keep-alive HTTP/1.1 connections are
used (all opened before the first request), one request in flight on each.

It prints one JSON object. ``send_lag_*`` (how late requests left relative to their
schedule while a connection was free) and ``cpu_share`` (this process's CPU time / wall
time) show whether the generator itself kept up: lag well under the latencies measured and a
CPU share well under 1.0 mean the numbers are the server's, not the generator's.

REQUESTS_FILE: one request per line, ``<path>\\t<operationID>\\t<JSON body>`` (as for
``loadgen.lua``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import time
from typing import Any


def load_requests(path: str, host: str) -> list[bytes]:
    out: list[bytes] = []
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            if not line:
                continue
            target, opid, body = line.split(b"\t", 2)
            body += b"\n"
            out.append(
                b"POST " + target + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                b"User-Agent: Go-http-client/1.1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
                b"Content-Type: application/json; charset=utf-8\r\nOperationid: " + opid + b"\r\n"
                b"Accept-Encoding: gzip\r\n\r\n" + body
            )
    if not out:
        raise SystemExit(f"openloop: no requests in {path}")
    return out


class Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.scheduled = 0.0
        self.start = 0.0
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy:
            self.busy = False
            self.gen.errors += 1
        self.gen.lost(self)

    def send(self, request: bytes, scheduled: float, start: float) -> None:
        assert self.transport is not None
        self.busy = True
        self.scheduled = scheduled
        self.start = start
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        status = int(head[9:12])
        pos = head.find(b"\ncontent-length:")
        if pos < 0:
            self.gen.errors += 1
            assert self.transport is not None
            self.transport.close()
            return
        stop = head.find(b"\r", pos + 16)
        length = int(head[pos + 16 : stop if stop > 0 else None])
        total = end + 4 + length
        if len(self.buf) < total:
            return
        del self.buf[:total]
        now = time.monotonic()
        self.busy = False
        self.gen.completed(self, status, now - self.start, now - self.scheduled)


class Generator:
    def __init__(self, requests: list[bytes], rate: float, duration: float, warmup: float,
                 connections: int, host: str, port: int) -> None:
        self.requests = requests
        self.rate = rate
        self.duration = duration
        self.warmup = warmup
        self.max_conns = connections
        self.host, self.port = host, port
        self.idle: collections.deque[Conn] = collections.deque()
        self.conns: list[Conn] = []
        self.pending: collections.deque[tuple[float, int]] = collections.deque()
        self.latencies: list[float] = []
        self.strict: list[float] = []
        self.lags: list[float] = []
        self.errors = 0
        self.non200 = 0
        self.sent = 0
        self.done = 0
        self.queued_max = 0
        self.measure_from = 0.0
        self.connecting = 0
        self.all_done = asyncio.Event()
        self.total = 0
        self.tasks: set[asyncio.Future[None]] = set()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.connecting += 1
        try:
            _, conn = await loop.create_connection(lambda: Conn(self), self.host, self.port)
        finally:
            self.connecting -= 1
        self.conns.append(conn)
        self.release(conn)

    def lost(self, conn: Conn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        self.check_done()

    def release(self, conn: Conn) -> None:
        if self.pending:
            scheduled, idx = self.pending.popleft()
            # It waited for a connection: the server's doing, so it counts from the schedule.
            self.fire(conn, scheduled, idx, scheduled)
        else:
            self.idle.append(conn)

    def fire(self, conn: Conn, scheduled: float, idx: int, start: float) -> None:
        self.sent += 1
        conn.send(self.requests[idx % len(self.requests)], scheduled, start)

    def completed(self, conn: Conn, status: int, latency: float, strict: float) -> None:
        self.done += 1
        if status != 200:
            self.non200 += 1
        if conn.scheduled >= self.measure_from:
            self.latencies.append(latency)
            self.strict.append(strict)
        self.release(conn)
        self.check_done()

    def check_done(self) -> None:
        if self.total and self.done + self.errors >= self.total:
            self.all_done.set()

    def dispatch(self, scheduled: float, idx: int) -> None:
        while self.idle and self.idle[0].closed:
            self.idle.popleft()
        if self.idle:
            conn = self.idle.popleft()
            now = time.monotonic()
            if scheduled >= self.measure_from:
                self.lags.append(now - scheduled)
            # A connection was free: any delay so far is this generator's timer, not the server.
            self.fire(conn, scheduled, idx, now)
            return
        self.pending.append((scheduled, idx))
        self.queued_max = max(self.queued_max, len(self.pending))
        if len(self.conns) + self.connecting < self.max_conns:
            task = asyncio.ensure_future(self.open())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def run(self) -> dict[str, Any]:
        # All connections up front (as wrk2 does), so the run never measures connection set-up.
        await asyncio.gather(*(self.open() for _ in range(self.max_conns)))
        loop = asyncio.get_running_loop()
        cpu0 = os.times()
        self.total = int((self.warmup + self.duration) * self.rate)
        t0 = loop.time() + 0.01
        self.measure_from = t0 + self.warmup
        i = 0
        while i < self.total:
            due = min(self.total, int((loop.time() - t0) * self.rate) + 1)
            while i < due:
                self.dispatch(t0 + i / self.rate, i)
                i += 1
            if i < self.total:
                await asyncio.sleep(max(0.0, t0 + i / self.rate - loop.time()))
        sched_end = loop.time()
        try:
            await asyncio.wait_for(self.all_done.wait(), timeout=10)
        except TimeoutError:
            pass
        wall = loop.time() - t0
        cpu1 = os.times()
        timeouts = self.total - self.done - self.errors
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()
        lat = sorted(self.latencies)
        strict = sorted(self.strict)
        lag = sorted(self.lags)

        def pct(values: list[float], p: float) -> float | None:
            if not values:
                return None
            return round(values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000, 3)

        measured = len(lat)
        return {
            "target_rate": self.rate,
            "achieved_rate": round(measured / self.duration, 1),
            "scheduled": self.total,
            "sent": self.sent,
            "completed": self.done,
            "errors": self.errors,
            "timeouts": timeouts,
            "non200": self.non200,
            "connections": len(self.conns),
            "queued_max": self.queued_max,
            "p50_ms": pct(lat, 50),
            "p90_ms": pct(lat, 90),
            "p99_ms": pct(lat, 99),
            "p999_ms": pct(lat, 99.9),
            "max_ms": round(lat[-1] * 1000, 3) if lat else None,
            "strict_p50_ms": pct(strict, 50),
            "strict_p99_ms": pct(strict, 99),
            "send_lag_p50_ms": pct(lag, 50),
            "send_lag_p99_ms": pct(lag, 99),
            "schedule_overrun_ms": round((sched_end - (t0 + self.total / self.rate)) * 1000, 3),
            "cpu_share": round(((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall, 3),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="open-loop fixed-rate HTTP load generator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--requests", required=True, help="requests file (path\\topid\\tbody per line)")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds at the same rate before measuring")
    p.add_argument("--connections", type=int, default=32, help="maximum keep-alive connections")
    args = p.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("openloop: only loopback targets are allowed")
    gen = Generator(load_requests(args.requests, f"{args.host}:{args.port}"), args.rate, args.duration,
                    args.warmup, args.connections, args.host, args.port)
    result = asyncio.run(gen.run())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
