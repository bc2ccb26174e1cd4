"""Isolation benchmarks: a noisy neighbour, and host memory under a cache-filling attack.

    python bench/bench_isolation.py [--duration 20] [--rate 100] [--only noisy|rss] [--code DIR]

noisy: a victim command (the blocklist invite script, one KV read per call, closed failure
  policy with errCode 5999, namespace "victim") is called open-loop at ``--rate`` per
  second; first alone (baseline), then while an attacker command in another namespace
  runs ``while True: pass`` in every call. Two attacks, each on a fresh server (so each
  includes the moments before the penalty box closes): "closed" -- as many concurrent
  attacker calls as there are sandbox workers, back to back (the attack of issue 15);
  "open" -- attacker calls at ``--attack-rate`` per second whatever the replies.
  The attacker's load runs in a process of its own (in the measuring process, its flood
  of instant refusals delayed the victim's replies on the client side).
  Targets: victim p99 under attack at most 2x its baseline, 0 failure-policy replies.
stall: Redis stops answering (CLIENT PAUSE ALL, 1 s of every 1.2 s) while a KV command
  (one kv.incr per call: a write, never answered from the cache) is called at 50/s; a command that makes no KV calls is
  measured at ``--rate`` (2 sandbox workers, as in issue 15). Target: its p99 unchanged.
rss: an attacker script writes then reads distinct 60 KB values (5 per call) through the
  real Redis with the client-side cache on; the HTTP process's resident memory is sampled
  throughout. Target: below 300 MB with default settings.

Both start their own redis-server and ScriptGate (``--code DIR`` runs another checkout's
server, e.g. the code before this change, for comparison). One JSON object on stdout, a
Markdown summary on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import (
    BASE,
    ROOT,
    TOKEN,
    Launcher,
    admin,
    free_port,
    http_call,
    log,
    rss_mb,
    wait_log,
)

from tests.gojson import go_encode

VICTIM = "callbackBeforeInviteJoinGroupCommand"
ATTACKER = "callbackBeforeSendSingleMsgCommand"
VICTIM_FAIL = 5999
ATTACKER_FAIL = 5998
SPIN = "def handle(req):\n    while True:\n        pass\n"
FILL = """\
def handle(req):
    n = kv.incr("fill:n")
    value = "x" * 60000 + str(n)
    for i in range(5):
        key = "fill:" + str(n) + ":" + str(i)
        kv.set(key, value)
        kv.get(key)
        kv.get(key)
    return allow()
"""
CONFIG = f"""
[commands.{VICTIM}]
failure_policy = "closed"
reject_errcode = {VICTIM_FAIL}
namespace = "victim"

[commands.{ATTACKER}]
failure_policy = "closed"
reject_errcode = {ATTACKER_FAIL}
namespace = "attacker"
"""


class Server:
    def __init__(self, launcher: Launcher, tmp: Path, code: Path, redis_url: str, sandbox_workers: int | None,
                 name: str) -> None:
        self.port = free_port()
        cfg = tmp / "isolation.toml"
        cfg.write_text(CONFIG)
        env = {**os.environ, "SCRIPTGATE_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(code)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        # -P: the server imports from PYTHONPATH (--code), not from the working directory.
        cmd = [sys.executable, "-P", "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--redis", redis_url, "--prefix", f"iso{free_port()}", "--config", str(cfg)]
        if sandbox_workers:
            cmd += ["--sandbox-workers", str(sandbox_workers)]
        self.proc = launcher.start(name, cmd, env)
        self.code = code
        wait_log(self.proc, "ready on")

    def put(self, command: str, source: str) -> None:
        admin(self.port, "PUT", f"/admin/scripts/{command}", source.encode())

    def health(self) -> dict[str, Any]:
        _, body = http_call(self.port, "GET", "/healthz")
        return json.loads(body)


def request(port: int, command: str, payload: dict[str, Any], opid: str) -> bytes:
    body = go_encode(payload) + b"\n"
    return (f"POST {BASE}/{command} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: application/json; charset=utf-8\r\nOperationid: {opid}\r\n\r\n").encode() + body


def victim_request(port: int, i: int) -> bytes:
    return request(port, VICTIM, {"callbackCommand": VICTIM, "operationID": f"v{i}", "groupID": "g1",
                                  "reason": "", "invitedUserIDs": [f"user{i % 500}", f"user{(i * 7) % 500}"]},
                   f"v{i}")


def attacker_request(port: int, i: int) -> bytes:
    return request(port, ATTACKER, {"callbackCommand": ATTACKER, "operationID": f"a{i}", "sendID": "s",
                                    "recvID": "r", "contentType": 101, "content": "{}", "sessionType": 1},
                   f"a{i}")


class Pool:
    """Keep-alive HTTP/1.1 connections, one request in flight on each."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.opened = 0

    async def _conn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.free.empty():
            self.opened += 1
            return await asyncio.open_connection("127.0.0.1", self.port)
        return self.free.get_nowait()

    async def call(self, raw: bytes) -> tuple[bytes, float]:
        """(reply body, seconds from when the request was written)."""
        r, w = await self._conn()
        started = time.perf_counter()
        w.write(raw)
        head = await r.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await r.readexactly(length)
        elapsed = time.perf_counter() - started
        self.free.put_nowait((r, w))
        return body, elapsed


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary(lat: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in lat]
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.50), 3), "p90_ms": round(pct(ms, 0.90), 3),
            "p99_ms": round(pct(ms, 0.99), 3), "max_ms": round(max(ms) if ms else float("nan"), 3),
            "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan")}


async def victim_load(port: int, rate: float, duration: float, offset: int) -> dict[str, Any]:
    pool = Pool(port)
    lat: list[float] = []
    when: list[float] = []
    codes: dict[str, int] = {}
    n = int(rate * duration)
    start = time.perf_counter()
    tasks = []

    async def one(i: int, scheduled: float) -> None:
        waited = pool.free.empty()
        body, elapsed = await pool.call(victim_request(port, offset + i))
        # From the schedule when the request had to wait for a connection (no coordinated
        # omission); else from the write, so the generator's timer lateness is not counted.
        lat.append(time.perf_counter() - scheduled if waited and pool.opened > 64 else elapsed)
        when.append(scheduled - start)
        reply = json.loads(body)
        code = str(reply.get("errCode"))
        codes[code] = codes.get(code, 0) + 1

    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, scheduled)))
    await asyncio.gather(*tasks)
    windows = []  # p99 per 2-second window: a transient shows apart from a steady cost
    for w in range(int(duration // 2)):
        part = [x for x, t in zip(lat, when, strict=True) if 2 * w <= t < 2 * w + 2]
        windows.append(summary(part)["p99_ms"])
    slowest = sorted(zip(lat, when, strict=True), reverse=True)[:5]
    return {"latency": summary(lat), "p99_ms_per_2s": windows, "errCodes": codes,
            "slowest": [{"ms": round(x * 1000, 1), "at_s": round(t, 3)} for x, t in slowest],
            "failure_policy_replies": codes.get(str(VICTIM_FAIL), 0)}


async def attacker_load(port: int, mode: str, concurrency: int, rate: float, stop: asyncio.Event) -> dict[str, Any]:
    """The open attack: calls at ``rate`` whatever the replies."""
    pool = Pool(port)
    codes: dict[str, int] = {}
    lat: list[float] = []
    first_refusal: list[float] = []
    started = time.perf_counter()

    async def one(n: int) -> None:
        body, elapsed = await pool.call(attacker_request(port, n))
        lat.append(elapsed)
        code = str(json.loads(body).get("errCode"))
        codes[code] = codes.get(code, 0) + 1
        if elapsed < 0.5 and code == str(ATTACKER_FAIL) and not first_refusal:
            first_refusal.append(time.perf_counter() - started)  # answered without running: boxed

    await at_rate(rate, stop, one)
    return {"mode": mode, "calls": sum(codes.values()), "errCodes": codes,
            "calls_per_s": round(sum(codes.values()) / (time.perf_counter() - started), 1),
            "first_instant_refusal_s": round(first_refusal[0], 2) if first_refusal else None,
            "latency": summary(lat)}


def closed_attack(port: int, concurrency: int, duration: float, ready: Any) -> dict[str, Any]:
    """``concurrency`` keep-alive connections, each sending its next call as soon as the
    last is answered: one blocking thread per connection, ~5x less client CPU per call
    than asyncio. Once the attacker is boxed its calls come back in about a millisecond,
    so this becomes a flood; a Python asyncio generator then took a whole vCPU of the two
    and the victim's processes waited for it, which measured the load generator."""
    codes: collections.Counter[str] = collections.Counter()
    lat: list[float] = []
    first_refusal: list[float] = []
    fail = f'"errCode":{ATTACKER_FAIL}'.encode()

    prepared = [[attacker_request(port, n * 10**6 + i) for i in range(200)] for n in range(concurrency)]

    def connection(n: int) -> None:
        reqs = prepared[n]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf, i = b"", 0
        with sock:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                sock.sendall(reqs[i % len(reqs)])
                i += 1
                while b"\r\n\r\n" not in buf:
                    buf += sock.recv(65536)
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                while len(buf) < length:
                    buf += sock.recv(65536)
                body, buf = buf[:length], buf[length:]
                elapsed = time.perf_counter() - t0
                lat.append(elapsed)
                boxed = fail in body
                codes[str(ATTACKER_FAIL) if boxed else str(json.loads(body).get("errCode"))] += 1
                if boxed and elapsed < 0.5 and not first_refusal:
                    first_refusal.append(time.perf_counter() - started)

    ready.set()  # requests built: the attack starts now
    started = time.perf_counter()
    end = started + duration
    threads = [threading.Thread(target=connection, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"mode": "closed", "calls": sum(codes.values()), "errCodes": dict(codes),
            "calls_per_s": round(sum(codes.values()) / (time.perf_counter() - started), 1),
            "first_instant_refusal_s": round(first_refusal[0], 2) if first_refusal else None,
            "latency": summary(lat)}


def _attacker_process(port: int, mode: str, concurrency: int, rate: float, duration: float,
                      started: Any, out: Any) -> None:
    """The attacker's load in a process of its own: generated in the measuring process,
    a flood of instant refusals (~1,000/s) kept that event loop busy, and the victim's
    replies waited there, not in the server."""
    if mode == "closed":
        out.put(closed_attack(port, concurrency, duration, started))
        return

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(duration, stop.set)
        started.set()
        return await attacker_load(port, mode, concurrency, rate, stop)

    out.put(asyncio.run(run()))


async def noisy_phase(srv: Server, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    await victim_load(srv.port, args.rate, 2.0, 0)  # warm-up: scripts compiled, connections open
    baseline = await victim_load(srv.port, args.rate, args.duration, 10_000)
    ctx = multiprocessing.get_context("spawn")  # not fork: this process has a running event loop
    started, out = ctx.Event(), ctx.Queue()
    attack = ctx.Process(target=_attacker_process, args=(srv.port, mode, args.sandbox_workers or 4,
                                                         args.attack_rate, args.duration, started, out))
    attack.start()
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, started.wait, 60):
        raise RuntimeError("the attacker process did not start")
    cpu0, t0 = cpu_s(srv.proc.pid), time.perf_counter()
    under = await victim_load(srv.port, args.rate, args.duration, 20_000)
    http_cpu = (cpu_s(srv.proc.pid) - cpu0) / (time.perf_counter() - t0)
    health = srv.health()
    attacker = await loop.run_in_executor(None, out.get, True, 60)
    await loop.run_in_executor(None, attack.join, 10)
    b99, a99 = baseline["latency"]["p99_ms"], under["latency"]["p99_ms"]
    return {"attack": mode, "baseline": baseline, "under_attack": under, "attacker": attacker,
            "http_process_cpu_under_attack": round(http_cpu, 2),
            "p99_ratio": round(a99 / b99, 2) if b99 else None,
            "meets_target": bool(b99 and a99 <= 2 * b99 and under["failure_policy_replies"] == 0),
            "healthz_fairness": health.get("fairness"), "healthz_sandbox": health.get("sandbox")}


NOKV = "def handle(req):\n    return allow()\n"
# A write: never answered from the client-side cache, so it waits on Redis every call.
KVWRITE = "def handle(req):\n    kv.incr('stall:calls')\n    return allow()\n"


async def open_load(port: int, make: Any, rate: float, stop: asyncio.Event) -> dict[str, int]:
    """Calls at ``rate`` until ``stop``, whatever the replies; errCode counts."""
    pool = Pool(port)
    codes: dict[str, int] = {}

    async def one(n: int) -> None:
        body, _ = await pool.call(make(port, n))
        code = str(json.loads(body).get("errCode"))
        codes[code] = codes.get(code, 0) + 1

    await at_rate(rate, stop, one)
    return codes


async def at_rate(rate: float, stop: asyncio.Event, call: Any) -> None:
    """Start ``call(i)`` for i = 0, 1, ... at ``rate`` per second until ``stop``, whatever
    the replies (open loop); then wait for all of them."""
    started = time.perf_counter()
    tasks = []
    i = 0
    while not stop.is_set():
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                pass
        tasks.append(asyncio.ensure_future(call(i)))
        i += 1
    await asyncio.gather(*tasks)


async def nokv_load(port: int, rate: float, duration: float) -> dict[str, Any]:
    pool = Pool(port)
    lat: list[float] = []
    codes: dict[str, int] = {}
    start = time.perf_counter()
    tasks = []

    async def one(i: int) -> None:
        body, elapsed = await pool.call(attacker_request(port, i))
        lat.append(elapsed)
        code = str(json.loads(body).get("errCode"))
        codes[code] = codes.get(code, 0) + 1

    for i in range(int(rate * duration)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    return {"latency": summary(lat), "errCodes": codes, "failure_policy_replies": codes.get(str(ATTACKER_FAIL), 0)}


async def stall_phase(srv: Server, args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    import redis.asyncio as aredis

    srv.put(ATTACKER, NOKV)  # the command without KV calls (the "victim" here)
    srv.put(VICTIM, KVWRITE)  # the KV command
    await nokv_load(srv.port, args.rate, 2.0)
    stop = asyncio.Event()
    kv_calls = asyncio.ensure_future(open_load(srv.port, victim_request, 50.0, stop))
    baseline = await nokv_load(srv.port, args.rate, args.duration)

    pauser = aredis.Redis.from_url(redis_url)
    pausing = asyncio.Event()

    async def pause_loop() -> None:
        while pausing.is_set():
            await pauser.execute_command("CLIENT", "PAUSE", 1000, "ALL")
            await asyncio.sleep(1.2)

    pausing.set()
    pauses = asyncio.ensure_future(pause_loop())
    stalled = await nokv_load(srv.port, args.rate, args.duration)
    health = srv.health()
    pausing.clear()
    await pauses
    await pauser.execute_command("CLIENT", "UNPAUSE")
    await pauser.aclose()
    stop.set()
    kv_codes = await kv_calls
    b99, s99 = baseline["latency"]["p99_ms"], stalled["latency"]["p99_ms"]
    return {"baseline": baseline, "during_stall": stalled, "kv_command_errCodes": kv_codes,
            "p99_ratio": round(s99 / b99, 2) if b99 else None, "healthz_sandbox": health.get("sandbox")}


async def rss_phase(srv: Server, args: argparse.Namespace) -> dict[str, Any]:
    srv.put(ATTACKER, FILL)
    pool = Pool(srv.port)
    samples: list[float] = []
    codes: dict[str, int] = {}
    counter = iter(range(10**9))
    pid = srv.proc.pid
    before = rss_mb(pid) or 0.0

    async def worker() -> None:
        for _ in range(args.rss_calls // args.rss_concurrency):
            body, _ = await pool.call(attacker_request(srv.port, next(counter)))
            code = str(json.loads(body).get("errCode"))
            codes[code] = codes.get(code, 0) + 1

    async def sampler(done: asyncio.Event) -> None:
        while not done.is_set():
            samples.append(rss_mb(pid) or 0.0)
            try:
                await asyncio.wait_for(done.wait(), 0.25)
            except TimeoutError:
                pass

    done = asyncio.Event()
    sampling = asyncio.ensure_future(sampler(done))
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.rss_concurrency)))
    elapsed = time.perf_counter() - started
    await asyncio.sleep(1.0)
    done.set()
    await sampling
    health = srv.health()
    after = rss_mb(pid) or 0.0
    peak = max([*samples, after])
    return {"calls": sum(codes.values()), "errCodes": codes, "values_written_and_read": 5 * sum(codes.values()),
            "seconds": round(elapsed, 1), "rss_mb_before": round(before, 1), "rss_mb_peak": round(peak, 1),
            "rss_mb_after": round(after, 1), "meets_target": peak < 300,
            "healthz_memory": health.get("memory"), "store_cache": (health.get("store") or {}).get("cache")}


def markdown(res: dict[str, Any]) -> str:
    out = []
    if "noisy" in res:
        out.append("| attack | victim p50 / p99 / max, baseline (ms) | victim p50 / p99 / max, under attack (ms) "
                   "| p99 ratio | victim failure-policy replies | attacker calls (boxed replies) |")
        out.append("|---|---|---|---|---|---|")
        for ph in res["noisy"]:
            b, u, a = ph["baseline"]["latency"], ph["under_attack"]["latency"], ph["attacker"]
            out.append(f"| {ph['attack']} | {b['p50_ms']} / {b['p99_ms']} / {b['max_ms']} "
                       f"| {u['p50_ms']} / {u['p99_ms']} / {u['max_ms']} | {ph['p99_ratio']}x "
                       f"| {ph['under_attack']['failure_policy_replies']} of {u['n']} "
                       f"| {a['calls']} ({a['errCodes'].get(str(ATTACKER_FAIL), 0)}) |")
    if "stall" in res:
        st = res["stall"]
        b, u = st["baseline"]["latency"], st["during_stall"]["latency"]
        out.append(f"\nKV stall: command without KV calls p50/p99/max {b['p50_ms']}/{b['p99_ms']}/{b['max_ms']} ms "
                   f"before, {u['p50_ms']}/{u['p99_ms']}/{u['max_ms']} ms during ({st['p99_ratio']}x), "
                   f"{st['during_stall']['failure_policy_replies']} failure-policy replies; KV command replies "
                   f"{st['kv_command_errCodes']}")
    if "rss" in res:
        r = res["rss"]
        out.append(f"\nRSS under the cache-filling attack: {r['values_written_and_read']} distinct 60 KB values in "
                   f"{r['seconds']} s; HTTP process RSS {r['rss_mb_before']} MB before, peak {r['rss_mb_peak']} MB, "
                   f"{r['rss_mb_after']} MB after.")
    return "\n".join(out)


async def main_async(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    launcher = Launcher(tmp)
    res: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count()}
    try:
        port = free_port()
        launcher.start("redis", [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                                 "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)])
        url = f"redis://127.0.0.1:{port}/0"
        import redis

        r = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        code = Path(args.code).resolve() if args.code else ROOT
        if args.only in (None, "noisy"):
            res["noisy"] = []
            for mode in args.attacks.split(","):
                srv = Server(launcher, tmp, code, url, args.sandbox_workers, f"scriptgate-{mode}")
                srv.put(VICTIM, (ROOT / "scripts" / f"{VICTIM}.py").read_text())
                srv.put(ATTACKER, SPIN)
                log(f"noisy neighbour, {mode} attack ...")
                res["noisy"].append(await noisy_phase(srv, args, mode))
                launcher.stop(srv.proc)
        if args.only in (None, "stall"):
            srv = Server(launcher, tmp, code, url, 2, "scriptgate-stall")
            log("KV stall ...")
            res["stall"] = await stall_phase(srv, args, url)
            launcher.stop(srv.proc)
        if args.only in (None, "rss"):
            srv = Server(launcher, tmp, code, url, args.sandbox_workers, "scriptgate-rss")
            log("cache-filling attack ...")
            res["rss"] = await rss_phase(srv, args)
            launcher.stop(srv.proc)
            r.flushall()
    finally:
        launcher.cleanup()
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of victim load per phase")
    p.add_argument("--rate", type=float, default=100.0, help="victim calls per second")
    p.add_argument("--attack-rate", type=float, default=50.0, help="attacker calls per second (open attack)")
    p.add_argument("--attacks", default="closed,open", help="which attacks: closed, open")
    p.add_argument("--sandbox-workers", type=int, default=4)
    p.add_argument("--rss-calls", type=int, default=3000)
    p.add_argument("--rss-concurrency", type=int, default=4)
    p.add_argument("--only", choices=["noisy", "stall", "rss"])
    p.add_argument("--code", help="checkout whose server to run (default: this one)")
    p.add_argument("--keep", action="store_true", help="keep the servers' logs (the temporary directory)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scriptgate-iso-"))
    try:
        res = asyncio.run(main_async(args, tmp))
    finally:
        if args.keep:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=1))
    print(markdown(res), file=sys.stderr)
    ok = all(ph["meets_target"] for ph in res.get("noisy", [])) and res.get("rss", {}).get("meets_target", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
