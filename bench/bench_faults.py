"""Fault run: callbacks under load while instances restart and Redis loses its data.

    python bench/bench_faults.py [--seconds S] [--threads N] [--only rolling,flush,restart,pause]

Starts its own redis-server (temp dir, no persistence) and ``scriptgate serve`` processes
(``--workers 2`` each) on 127.0.0.1 free ports; everything is stopped at the end. Traffic:
``--threads`` threads sending callbacks, each on a new connection
(``tests/fault_load.py``: a refused connection goes to the other instance, as a load
balancer does; anything else that is not the script's reply counts as failed).

Scenarios (one table row each):

* rolling: two instances on one Redis; instance A gets SIGTERM, drains, is started again
  on its port, then the same for B;
* flush: one instance, ``failure_policy = "closed"``; ``FLUSHALL`` under load;
* restart: the same, Redis killed and started again without persistence (empty);
* pause: Redis frozen (SIGSTOP) for 3 s: how long until ``/healthz`` says "degraded"
  (polled every 10 ms), and until "ok" again after SIGCONT.

Printed: callbacks answered with the script's reply, failed callbacks, p50/p99/max
latency of the answered ones, and what the scenario measures.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fault_load import FRIEND, Load  # noqa: E402
from tests.redis_servers import Standalone  # noqa: E402
from tests.server_proc import ServerProc, launch_server  # noqa: E402

SCRIPT = "def handle(req):\n    return deny(5001, 'script ran')\n"
CLOSED = '[defaults]\nfailure_policy = "closed"\nreject_errcode = 5999\n'


def serve(args: list[str], port: int | None = None) -> ServerProc:
    srv = launch_server(*args, "--workers", "2", "--sandbox-workers", "2", port=port)
    srv.wait_line("ready on", 60, count=2)
    return srv


def restart(srv: ServerProc, args: list[str]) -> tuple[ServerProc, float, float]:
    """SIGTERM, wait for the exit, start again on the same port: (new server, seconds to
    exit, seconds until ready again)."""
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(60)
    down = time.monotonic() - t0
    new = serve(args, srv.port)
    return new, down, time.monotonic() - t0


def run_load(ports: list[int], threads: int, seconds: float, fault: Any) -> tuple[Load, str]:
    load = Load(ports, "script ran").start(threads)
    try:
        time.sleep(seconds / 3)
        note = fault()
        time.sleep(seconds / 3)
    finally:
        load.finish()
    return load, note


def row(name: str, load: Load, note: str) -> str:
    lat = sorted(load.latencies)

    def q(p: float) -> str:
        return f"{1000 * lat[min(len(lat) - 1, int(p * len(lat)))]:.1f}" if lat else "-"

    med = f"{1000 * statistics.median(lat):.1f}" if lat else "-"
    return f"| {name} | {load.ok} | {len(load.failed)} | {med} | {q(0.99)} | {q(1.0)} | {note} |"


def wait_log(srv: ServerProc, pattern: str, since: int) -> float:
    t0 = time.monotonic()
    srv.wait_line(pattern, 60, start=since)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=9.0, help="traffic per scenario (default 9)")
    ap.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    ap.add_argument("--only", default="rolling,flush,restart,pause")
    opts = ap.parse_args()
    only = set(opts.only.split(","))
    rows: list[str] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sg-faults-") as tmp:
        cfg = Path(tmp) / "closed.toml"
        cfg.write_text(CLOSED)
        redis = Standalone(Path(tmp) / "redis")
        try:
            if "rolling" in only:
                args = ["--redis", redis.url, "--prefix", "rolling"]
                a, b = serve(args), serve(args)
                a.upload(FRIEND, SCRIPT)
                times: list[str] = []

                def roll() -> str:
                    nonlocal a, b
                    a, down_a, up_a = restart(a, args)
                    time.sleep(opts.seconds / 6)
                    b, down_b, up_b = restart(b, args)
                    times.append(f"A: exit {down_a:.2f}s, ready {up_a:.2f}s; B: exit {down_b:.2f}s, ready {up_b:.2f}s")
                    return times[-1]

                try:
                    load, note = run_load([a.port, b.port], opts.threads, opts.seconds, roll)
                finally:
                    a.stop()
                    b.stop()
                rows.append(row("rolling restart (2 instances x 2 HTTP processes)", load, note))
                failures += load.failed
            for name in ("flush", "restart"):
                if name not in only:
                    continue
                args = ["--redis", redis.url, "--prefix", name, "--config", str(cfg)]
                srv = serve(args)
                srv.upload(FRIEND, SCRIPT)

                def lose(srv: ServerProc = srv, name: str = name) -> str:
                    mark = len(srv.output)
                    t0 = time.monotonic()
                    if name == "flush":
                        redis.client().flushall()
                    else:
                        redis.server.kill()
                        redis.server.start()
                    wait_log(srv, "script registry restored from the last known", mark)
                    restored = time.monotonic() - t0
                    health = srv.request("GET", "/healthz", token=False).json()
                    return f"registry written back {restored:.2f}s after the loss; /healthz {health['status']!r}"

                try:
                    load, note = run_load([srv.port], opts.threads, opts.seconds, lose)
                finally:
                    srv.stop()
                what = "FLUSHALL" if name == "flush" else "Redis restarted empty"
                rows.append(row(f"{what} (closed policy, 2 HTTP processes)", load, note))
                failures += load.failed
            if "pause" in only:
                srv = serve(["--redis", redis.url, "--prefix", "pause"])
                srv.upload(FRIEND, SCRIPT)

                def status() -> str:
                    return str(srv.request("GET", "/healthz", token=False, timeout=30).json()["status"])

                def freeze() -> str:
                    t0 = time.monotonic()
                    redis.server.pause()
                    try:
                        while status() == "ok":
                            time.sleep(0.01)
                        seen = time.monotonic() - t0
                        time.sleep(max(0.0, 3 - (time.monotonic() - t0)))
                    finally:
                        redis.server.resume()
                    t1 = time.monotonic()
                    while status() != "ok":
                        time.sleep(0.01)
                    return (f"/healthz 'degraded' {1000 * seen:.0f} ms into a 3 s freeze, "
                            f"'ok' {1000 * (time.monotonic() - t1):.0f} ms after it")

                try:
                    load = Load([srv.port], "script ran").start(opts.threads)
                    try:
                        time.sleep(1)
                        note = freeze()
                        time.sleep(1)
                    finally:
                        load.finish()
                finally:
                    srv.stop()
                rows.append(row("Redis paused 3 s (script without KV)", load, note))
                failures += load.failed
        finally:
            redis.close()
    print(f"fault run: {opts.threads} client threads, new connection per callback, ~{opts.seconds:g} s per scenario")
    print("| scenario | answered by the script | failed | p50 ms | p99 ms | max ms | measured |")
    print("|---|---|---|---|---|---|---|")
    for line in rows:
        print(line)
    for f in failures[:10]:
        print("failed:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
