"""Replay throughput: records per second through the real sandbox, offline.

    python bench/bench_replay.py [--records 5000] [--workers N] [--jobs N] [--repeat 3] [--check]

Replays the same synthetic ``callbackBeforeInviteJoinGroupCommand`` records through
three scripts in one offline environment (the one ``scriptgate replay`` uses: worker
pool, dispatch path, embedded KV store seeded from a snapshot):

* ``noop``     returns None: the baseline, i.e. the cost of the machinery itself;
* ``simple``   a rule on the payload (deny bots, drop test accounts): the target script;
* ``kv``       the blocklist check with one ``kv.smismember`` per record.

Each is timed ``--repeat`` times (best run kept, start-up excluded) and reported as
records/s and as a ratio to the baseline, so numbers from a busy machine still compare.
``--check`` exits 1 when ``simple`` is below the target (default 2,000 records/s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.catalog import catalog
from server.offline import replay as rp
from server.offline.env import default_workers, open_env

COMMAND = "callbackBeforeInviteJoinGroupCommand"
ACK = {"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0}

SCRIPTS = {
    "noop": "def handle(req):\n    return None\n",
    "simple": (
        "def handle(req):\n"
        "    ids = req['invitedUserIDs']\n"
        "    if any(u.startswith('bot_') for u in ids):\n"
        "        return deny(5001, 'bots cannot be invited')\n"
        "    kept = [u for u in ids if not u.startswith('test_')]\n"
        "    if len(kept) != len(ids):\n"
        "        return allow(invitedUserIDs=kept)\n"
        "    return allow()\n"
    ),
    "kv": (
        "def handle(req):\n"
        "    ids = req['invitedUserIDs']\n"
        "    flags = kv.smismember('blocklist:users', ids)\n"
        "    blocked = [u for u, b in zip(ids, flags) if b]\n"
        "    if blocked and len(blocked) == len(ids):\n"
        "        return deny(5001, 'invitation refused')\n"
        "    if blocked:\n"
        "        return allow(invitedUserIDs=[u for u, b in zip(ids, flags) if not b])\n"
        "    return allow()\n"
    ),
}


def synthetic(n: int) -> list[rp.Record]:
    out = []
    for i in range(n):
        ids = [f"u{i % 97}", f"u{(i * 7) % 101}"]
        if i % 10 == 3:
            ids.append(f"bot_{i}")
        if i % 10 == 5:
            ids.append(f"test_{i}")
        req = {"callbackCommand": COMMAND, "operationID": f"op-{i}", "groupID": f"g{i % 50}",
               "reason": "", "invitedUserIDs": ids}
        out.append(rp.Record(i + 1, COMMAND, f"op-{i}", req, "allow", ACK))
    return out


async def bench(args: argparse.Namespace) -> dict[str, float]:
    snap = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-replay-{os.getpid()}.json"
    snap.write_bytes(orjson.dumps({"namespace": "default", "keys": [
        {"key": "blocklist:users", "type": "set", "value": [f"u{i}" for i in range(0, 101, 5)], "ttl": None}]}))
    records = synthetic(args.records)
    command = catalog().get(COMMAND)
    rates: dict[str, float] = {}
    try:
        env = await open_env(snapshot_path=str(snap), workers=args.workers)
    finally:
        snap.unlink(missing_ok=True)
    async with env:
        for name, source in SCRIPTS.items():
            env.load(command, source)
            await rp.replay(env, command, records[: min(200, len(records))], jobs=args.jobs)  # warm-up
            best = float("inf")
            for _ in range(args.repeat):
                started = time.perf_counter()
                summary, _ = await rp.replay(env, command, records, jobs=args.jobs)
                best = min(best, time.perf_counter() - started)
                errors = summary.counts[rp.NEW_ERROR] + summary.counts[rp.SAME_ERROR]
                if errors:
                    raise SystemExit(f"{name}: {errors} script errors during the benchmark")
            rates[name] = len(records) / best
    return rates


def main() -> int:
    workers = default_workers()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--workers", type=int, default=workers, help=f"sandbox workers (default {workers})")
    p.add_argument("--jobs", type=int, default=None, help="records in flight (default: 2 x workers)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--target", type=float, default=2000.0, help="records/s the simple script must reach")
    p.add_argument("--check", action="store_true", help="exit 1 if the simple script is below --target")
    args = p.parse_args()
    args.jobs = args.jobs or 2 * args.workers
    rates = asyncio.run(bench(args))
    base = rates["noop"]
    print(f"replay benchmark: {args.records} records, {args.workers} sandbox workers, {args.jobs} in flight, "
          f"best of {args.repeat}, {os.cpu_count()} CPUs")
    print(f"{'script':<8} {'records/s':>10} {'vs noop':>8}")
    for name, rate in rates.items():
        print(f"{name:<8} {rate:>10,.0f} {rate / base:>8.2f}")
    ok = rates["simple"] >= args.target
    print(f"simple script: {rates['simple']:,.0f} records/s (target {args.target:,.0f}): {'OK' if ok else 'BELOW TARGET'}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
