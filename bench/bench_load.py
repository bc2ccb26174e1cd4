"""Load benchmark: ScriptGate against hand-written Tornado receivers, side by side.

    python bench/bench_load.py [--quick] [--duration S] [--rounds N] [--soak S] [--out FILE]
                               [--baseline-code DIR]

One run starts, on this machine and only on 127.0.0.1: its own redis-server (temp dir, no
persistence), ScriptGate (``python -m server.cli serve``, one HTTP process unless stated) and
one process per mode of ``bench/handwritten.py``: ``fair-cached`` (async Tornado +
redis.asyncio, one SMISMEMBER, an in-process cache kept exact by client-side tracking: the
best hand-written receiver, the one the report leads with), ``fair`` (the same without the
cache), ``naive`` (sync redis-py, one SISMEMBER per invitee), and the floors ``echo`` (parses
the JSON, answers the ack) and ``noop`` (answers the ack). With ``--baseline-code DIR`` a
second ScriptGate runs the code of another checkout (e.g. the previous commit's
``git worktree``) in the same run, with this checkout's scripts.
All get the same Redis, the same data (written once through ScriptGate's admin API; the
hand-written receivers are pointed at the very same keys), the same wrk settings and
byte-identical requests (callbacks encoded as OpenIM's Go client encodes them, with Go's
headers). Before anything is timed, every distinct request of the check sample is sent to
ScriptGate and to every receiver with logic, and the replies must be byte-identical.

Phases (each is a table in the report; the first table sums up ScriptGate's ratios):

1. invite: invitation blocklist (``scripts/callbackBeforeInviteJoinGroupCommand.py``), 1,000
   blocked IDs, 3-5 invitees per callback (60% none blocked, 30% some, 10% all). wrk runs
   rotate over the receivers (the order shifts every round), after a warm-up each; the
   ratio ScriptGate / receiver is computed per round and the median reported.
2. keyword: a 2 KB text message checked against a 1,000-word filter set
   (``scripts/callbackBeforeSendGroupMsgCommand.py``; hand-written: one SMISMEMBER).
3. after: after-callback flood (``bench/scripts/callbackAfterSendGroupMsgCommand.py``: one
   INCR per message; hand-written: one INCR).
4. latency: open-loop fixed rate (``bench/openloop.py``) at half of ScriptGate's invite peak
   from phase 1, for ScriptGate, fair-cached and the no-op floor; p99 target <= 5 ms and at
   most 2x fair-cached's.
5. embedded: ScriptGate with its embedded store (no --redis) against fair-cached (on Redis).
6. scale: ScriptGate with 1 and with 2 HTTP processes (same Redis), alternated, plus
   fair-cached.
7. soak: a fresh ScriptGate (1 HTTP process) under mixed traffic for ``--soak`` seconds in
   segments (throughput/p99 per segment); RSS of the HTTP process and of every sandbox
   worker (children found through /proc) sampled every 2 s: start/end/max and growth over
   the second half.

CPU time of every process involved (wrk, redis-server, the receiver and its sandbox
workers) is measured per timed run, so each figure says what was busy.

Every process started here is stopped on exit, on failure, on Ctrl-C and on SIGTERM; a
watchdog aborts a run that overstays its budget.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from tests.gojson import go_encode  # noqa: E402  (the Go encoder the e2e tests use)

INVITE = "callbackBeforeInviteJoinGroupCommand"
GROUPMSG = "callbackBeforeSendGroupMsgCommand"
AFTERMSG = "callbackAfterSendGroupMsgCommand"
BASE = "/callbackExample"  # OpenIM's default webhook url path
TOKEN = "bench-admin-token-" + "b" * 24
PREFIX = "bench"
BASE_PREFIX = "benchbase"  # the --baseline-code server's registry and keys, apart from ours
# bench/handwritten.py --mode -> receiver name in the report; the order is the report's.
HW_NAMES = {"fair-cached": "fair-cached", "fair": "fair", "naive": "naive-sync",
            "echo": "tornado-echo", "noop": "tornado-noop"}
FLOORS = ("echo", "noop")  # no logic: their replies to rejected requests differ (not checked)
SG = "ScriptGate"
SG_BASE = "ScriptGate-baseline"
CLK_TCK = os.sysconf("SC_CLK_TCK")
QUIET_OK = 0.3  # a round counts as quiet when other jobs used at most this many cores in each of its runs
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchTimeout(Exception):
    pass


class Stop(Exception):
    """SIGTERM/SIGHUP: unwind and clean up like Ctrl-C."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- /proc ---------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def proc_identity(pid: int) -> tuple[int, int] | None:
    st = proc_stat(pid)
    return None if st is None else (pid, int(st[19]))  # starttime


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        st = proc_stat(int(entry.name))
        if st is not None:
            kids.setdefault(int(st[1]), []).append(int(entry.name))
    return kids


def descendants(pid: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    kids = kids if kids is not None else children_map()
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def cpu_ticks(pid: int, own: bool = True, reaped: bool = True) -> int:
    """utime + stime (own) and/or the CPU of reaped children (recycled sandbox workers)."""
    st = proc_stat(pid)
    if st is None:
        return 0
    return (int(st[11]) + int(st[12]) if own else 0) + (int(st[13]) + int(st[14]) if reaped else 0)


def machine_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    steal = fields[7] if len(fields) > 7 else 0
    return total - idle - steal, steal, total


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_worker(pid: int) -> bool:
    """A sandbox worker (or its template): ``-m sandbox.worker`` since the layout commit,
    ``sandbox.worker.main`` before it (--baseline-code may run older code)."""
    cmd = cmdline(pid)
    return "-m sandbox.worker" in cmd or "sandbox.worker.main" in cmd


# --- processes -----------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    logfile: Path | None
    ident: tuple[int, int] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


def _die_with_parent() -> None:
    """In the child: SIGTERM when the benchmark process dies, even by SIGKILL."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Launcher:
    """Starts processes in their own sessions and guarantees they are all gone at the end,
    including descendants that moved to their own session (sandbox workers)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.seen: set[tuple[int, int]] = set()  # (pid, starttime) of every descendant seen

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              capture: bool = False, cwd: Path = ROOT) -> Proc:
        logfile = self.tmp / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".log")
        out = open(logfile, "ab")  # handed to the child, closed here after the fork
        try:
            popen = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else out, stderr=out, start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        proc = Proc(name, popen, logfile, proc_identity(popen.pid))
        self.procs.append(proc)
        return proc

    def remember_tree(self) -> None:
        kids = children_map()
        for p in self.procs:
            if p.popen.poll() is None:
                for d in descendants(p.pid, kids):
                    ident = proc_identity(d)
                    if ident:
                        self.seen.add(ident)

    def stop(self, proc: Proc, timeout: float = 10) -> None:
        if proc.popen.poll() is None:
            self.remember_tree()
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers in its session
        if proc in self.procs:
            self.procs.remove(proc)
        self.reap_seen()

    def reap_seen(self) -> None:
        deadline = time.monotonic() + 3
        for pid, start in list(self.seen):
            while proc_identity(pid) == (pid, start) and time.monotonic() < deadline:
                time.sleep(0.05)  # give the parent's orderly shutdown a moment
            if proc_identity(pid) == (pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.seen.discard((pid, start))

    def cleanup(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc, timeout=5)
            except Exception as exc:  # keep going: everything must be stopped
                log(f"cleanup of {proc.name}: {exc}")
        self.reap_seen()


def wait_log(proc: Proc, needle: str, count: int = 1, timeout: float = 60) -> None:
    assert proc.logfile is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proc.logfile.read_text(errors="replace")
        if text.count(needle) >= count:
            return
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    tail = proc.logfile.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{proc.name} did not become ready:\n{tail}")


def wait_for(proc: Proc, timeout: float) -> os.waitid_result | tuple[int, Any]:
    """Wait for a child and return (status, rusage) without losing its CPU accounting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.popen.returncode = os.waitstatus_to_exitcode(status)
            return status, usage
        time.sleep(0.02)
    raise BenchTimeout(f"{proc.name} did not finish within {timeout:.0f}s")


# --- HTTP ----------------------------------------------------------------------------------


def http_call(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def admin(port: int, method: str, path: str, body: Any = None) -> Any:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    status, data = http_call(port, method, path, raw, {"Authorization": f"Bearer {TOKEN}"})
    if status >= 300:
        raise RuntimeError(f"admin {method} {path}: {status} {data[:500]!r}")
    return json.loads(data) if data else None


# --- data ----------------------------------------------------------------------------------


@dataclass
class Data:
    blocked: list[str]
    filter_words: list[str]
    files: dict[str, Path] = field(default_factory=dict)
    lines: dict[str, list[str]] = field(default_factory=dict)


def user_ids(rng: random.Random, n: int) -> list[str]:
    ids: set[str] = set()
    while len(ids) < n:
        ids.add(str(rng.randrange(10**9, 10**10)))  # OpenIM user IDs are 10-digit strings
    return sorted(ids)


def pseudo_words(rng: random.Random, n: int, exclude: set[str]) -> list[str]:
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    out: set[str] = set()
    while len(out) < n:
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4)))
        if w not in exclude:
            out.add(w)
    return sorted(out)


def line(command: str, opid: str, payload: dict[str, Any]) -> str:
    body = go_encode(payload).decode()
    assert body.endswith("\n") and "\n" not in body[:-1] and "\t" not in body
    return f"{BASE}/{command}\t{opid}\t{body[:-1]}"


def message(rng: random.Random, command: str, opid: str, group: str, text: str) -> dict[str, Any]:
    now = 1_700_000_000_000 + rng.randrange(10**9)
    return {
        "sendID": str(rng.randrange(10**9, 10**10)),
        "callbackCommand": command,
        "serverMsgID": f"{rng.getrandbits(64):016x}",
        "clientMsgID": f"{rng.getrandbits(128):032x}",
        "operationID": opid,
        "senderPlatformID": rng.choice([1, 2, 5]),
        "senderNickname": "user" + str(rng.randrange(1000)),
        "sessionType": 3,
        "msgFrom": 100,
        "contentType": 101,
        "status": 1,
        "sendTime": now,
        "createTime": now - 3,
        "content": json.dumps({"content": text}, ensure_ascii=False),
        "seq": 0,
        "atUserList": None,
        "faceURL": "",
        "ex": "",
        "groupID": group,
    }


def make_data(tmp: Path, seed: int = 7, n_invites: int = 4000, n_messages: int = 600) -> Data:
    rng = random.Random(seed)
    users = user_ids(rng, 20_000)
    blocked = rng.sample(users, 1000)
    blocked_set = set(blocked)
    clean = [u for u in users if u not in blocked_set]
    groups = [str(rng.randrange(10**9, 10**10)) for _ in range(200)]
    filter_words = pseudo_words(rng, 1000, set())
    vocab = pseudo_words(rng, 5000, set(filter_words))
    data = Data(blocked, filter_words)

    invites = []
    for i in range(n_invites):
        k = rng.randint(3, 5)
        kind = rng.random()
        if kind < 0.6:
            invited = rng.sample(clean, k)
        elif kind < 0.9:
            nb = rng.randint(1, k - 1)
            invited = rng.sample(blocked, nb) + rng.sample(clean, k - nb)
            rng.shuffle(invited)
        else:
            invited = rng.sample(blocked, k)
        opid = f"{1_700_000_000_000 + i}"
        invites.append(line(INVITE, opid, {
            "callbackCommand": INVITE, "operationID": opid, "groupID": rng.choice(groups),
            "reason": rng.choice(["", "friend", "team"]), "invitedUserIDs": invited,
        }))

    messages = []
    for i in range(n_messages):
        words: list[str] = []
        size = 0
        while size < 2048:
            w = rng.choice(vocab)
            words.append(w)
            size += len(w) + 1
        if rng.random() < 0.2:
            words[rng.randrange(len(words))] = rng.choice(filter_words).upper()
        text = " ".join(words)[:2048]
        opid = f"{1_710_000_000_000 + i}"
        messages.append(line(GROUPMSG, opid, message(rng, GROUPMSG, opid, rng.choice(groups), text)))

    afters = []
    for i in range(2000):
        opid = f"{1_720_000_000_000 + i}"
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 20)))
        afters.append(line(AFTERMSG, opid, message(rng, AFTERMSG, opid, rng.choice(groups), text)))

    mixed = []
    for i in range(max(len(invites), len(messages), len(afters))):
        mixed.append(invites[i % len(invites)])
        mixed.append(afters[i % len(afters)])
        if i % 4 == 0:
            mixed.append(messages[i % len(messages)])

    for name, lines in (("invite", invites), ("keyword", messages), ("after", afters), ("mixed", mixed)):
        path = tmp / f"requests-{name}.txt"
        path.write_text("\n".join(lines) + "\n")
        data.files[name] = path
        data.lines[name] = lines
    return data


# --- servers -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    proc: Proc
    kind: str  # scriptgate | handwritten

    def tree(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.launcher = Launcher(tmp)
        self.redis: Proc | None = None
        self.redis_url = ""
        self.kv_prefix = ""
        self.results: dict[str, Any] = {"runs": []}
        self.data: Data | None = None
        # How ScriptGate is started (a profiler wrapper can replace this).
        self.sg_launch: list[str] = [sys.executable, "-m", "server.cli"]
        self.quiet_budget = float(getattr(args, "quiet_budget", 0.0))

    # --- processes ---

    def start_redis(self) -> None:
        port = free_port()
        self.redis = self.launcher.start("redis", [
            shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.tmp), "--daemonize", "no",
        ])
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        import redis

        r = redis.Redis.from_url(self.redis_url)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        self.results["redis_version"] = r.info("server")["redis_version"]
        r.close()

    def start_scriptgate(self, name: str, workers: int = 1, embedded: bool = False, prefix: str = PREFIX,
                         code: Path = ROOT) -> Target:
        """``code``: the checkout whose server runs (``--baseline-code``); the scripts and
        the data are always this checkout's."""
        port = free_port()
        env = {**os.environ, "SCRIPTGATE_ADMIN_TOKEN": TOKEN,
               "PYTHONPATH": str(code) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        cmd = [*self.sg_launch, "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--sandbox-workers", str(self.args.sandbox_workers), "--prefix", prefix]
        if self.args.sandbox_spin_us is not None:
            cmd += ["--sandbox-spin-us", str(self.args.sandbox_spin_us)]
        if not embedded:
            cmd += ["--redis", self.redis_url]
        proc = self.launcher.start(name, cmd, env, cwd=code)
        wait_log(proc, "ready on", count=workers)
        target = Target(name, port, proc, "scriptgate")
        self.load_scripts(target, workers)
        return target

    def load_scripts(self, t: Target, workers: int = 1) -> None:
        for command, path in ((INVITE, ROOT / "scripts" / f"{INVITE}.py"),
                              (GROUPMSG, ROOT / "scripts" / f"{GROUPMSG}.py"),
                              (AFTERMSG, BENCH / "scripts" / f"{AFTERMSG}.py")):
            admin(t.port, "PUT", f"/admin/scripts/{command}", path.read_bytes())
        assert self.data is not None
        for key, members in (("blocklist:users", self.data.blocked), ("filter:words", self.data.filter_words)):
            for i in range(0, len(members), 500):
                admin(t.port, "POST", f"/admin/kv/{key}/members", {"add": members[i : i + 500]})
        # Every HTTP process must serve the new scripts (the registry watcher: < 1 s).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _, body = http_call(t.port, "POST", f"{BASE}/{INVITE}",
                                go_encode({"callbackCommand": INVITE, "operationID": "x", "groupID": "g",
                                           "reason": "", "invitedUserIDs": [self.data.blocked[0]]}))
            if b'"nextCode":1' in body:
                break
            time.sleep(0.1)
        if workers > 1:
            time.sleep(1.0)  # the other HTTP processes pick the scripts up within a second

    def discover_kv_prefix(self) -> None:
        import redis

        r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        keys = list(r.scan_iter(match=f"{PREFIX}:*blocklist:users", count=1000))
        r.close()
        if len(keys) != 1:
            raise RuntimeError(f"expected one blocklist key in Redis, found {keys}")
        self.kv_prefix = keys[0][: -len("blocklist:users")]

    def start_handwritten(self, mode: str) -> Target:
        port = free_port()
        name = HW_NAMES[mode]
        proc = self.launcher.start(name, [
            sys.executable, str(BENCH / "handwritten.py"), "--mode", mode, "--port", str(port),
            "--redis", self.redis_url, "--kv-prefix", self.kv_prefix, "--json", self.args.hw_json,
        ])
        wait_log(proc, "ready on")
        return Target(name, port, proc, "handwritten")

    # --- checks ---

    def check_same_replies(self, a: Target, others: list[Target]) -> dict[str, Any]:
        """Every sampled request must get byte-identical replies from ``a`` and each of ``others``."""
        assert self.data is not None
        verdicts: dict[str, dict[str, int]] = {}
        sample = {"invite": 400, "keyword": 100, "after": 50}
        for scenario, n in sample.items():
            counts = verdicts.setdefault(scenario, {})
            for text in self.data.lines[scenario][:n]:
                path, opid, body = text.split("\t", 2)
                payload = (body + "\n").encode()
                hdrs = {"Content-Type": "application/json; charset=utf-8", "Operationid": opid}
                ra = http_call(a.port, "POST", path, payload, hdrs)
                for b in others:
                    rb = http_call(b.port, "POST", path, payload, hdrs)
                    if ra != rb:
                        raise RuntimeError(f"replies differ for {path} {body[:200]}:\n {a.name}: {ra}\n {b.name}: {rb}")
                reply = json.loads(ra[1])
                verdict = ("deny" if reply["nextCode"] == 1 else
                           "modify(narrowed)" if "invitedUserIDs" in reply
                           and len(reply["invitedUserIDs"]) < len(json.loads(body)["invitedUserIDs"])
                           else "modify(unchanged)" if "invitedUserIDs" in reply else "continue")
                counts[verdict] = counts.get(verdict, 0) + 1
        return verdicts

    # --- load ---

    def cpu_snapshot(self, targets: list[Target]) -> dict[str, int]:
        snap: dict[str, int] = {}
        snap["_busy"], snap["_steal"], _ = machine_ticks()
        assert self.redis is not None
        snap["redis"] = cpu_ticks(self.redis.pid)
        kids = children_map()
        for t in targets:
            pids = [t.proc.pid, *descendants(t.proc.pid, kids)]
            if t.kind == "scriptgate":
                # HTTP processes: the target and (with --workers N) its direct children. A
                # grandchild that is not a worker yet is one being spawned (forked, not exec'd).
                direct = {t.proc.pid, *kids.get(t.proc.pid, [])}
                http_pids = [p for p in pids if p in direct and not is_worker(p)]
                worker_pids = [p for p in pids if is_worker(p)]
                snap[f"{t.name}:http"] = sum(cpu_ticks(p, reaped=False) for p in http_pids)
                # Workers recycled during the run are reaped by their HTTP process.
                snap[f"{t.name}:workers"] = sum(cpu_ticks(p) for p in worker_pids) + sum(
                    cpu_ticks(p, own=False) for p in http_pids if p != t.proc.pid or len(http_pids) == 1)
                if len(http_pids) > 1:  # --workers N: the supervisor, then one per HTTP process
                    for i, p in enumerate(sorted(http_pids[1:])):
                        snap[f"{t.name}:http#{i + 1}"] = cpu_ticks(p, reaped=False)
            else:
                snap[f"{t.name}:http"] = sum(cpu_ticks(p) for p in pids)
        return snap

    @staticmethod
    def cpu_delta(before: dict[str, int], after: dict[str, int], wall: float, loadgen_s: float) -> dict[str, float]:
        """Cores used per process group during a run; ``other`` is everything else on the
        machine (other users' jobs: noise), ``steal`` the hypervisor's."""
        cpu = {k: round((after[k] - before.get(k, 0)) / CLK_TCK / wall, 3) for k in after if not k.startswith("_")}
        cpu["wrk"] = round(loadgen_s / wall, 3)
        busy = (after["_busy"] - before["_busy"]) / CLK_TCK / wall
        cpu["other"] = round(max(0.0, busy - sum(v for k, v in cpu.items() if "#" not in k)), 3)
        cpu["steal"] = round((after["_steal"] - before["_steal"]) / CLK_TCK / wall, 3)
        return cpu

    def wait_quiet(self, targets: list[Target]) -> float:
        """Wait (within ``--quiet-wait`` seconds per run and a total budget) until other
        jobs on this shared machine use less than ``--quiet-cores``; return what they used."""
        deadline = time.monotonic() + min(getattr(self.args, "quiet_wait", 0.0), self.quiet_budget)
        started = time.monotonic()
        while True:
            before = self.cpu_snapshot(targets)
            time.sleep(0.5)
            after = self.cpu_snapshot(targets)
            other = self.cpu_delta(before, after, 0.5, 0.0)["other"]
            if other <= getattr(self.args, "quiet_cores", 0.25) or time.monotonic() >= deadline:
                break
        self.quiet_budget -= time.monotonic() - started
        return other

    def wrk(self, target: Target, scenario: str, duration: float, connections: int | None = None,
            others: list[Target] | None = None, record: bool = True, label: str = "") -> dict[str, Any]:
        assert self.data is not None
        conns = connections or self.args.connections
        cmd = [shutil.which("wrk") or "/usr/bin/wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
               "-s", str(BENCH / "loadgen.lua"), f"http://127.0.0.1:{target.port}", "--",
               str(self.data.files[scenario])]
        watched = [target]
        background = self.wait_quiet(watched) if record else None
        before = self.cpu_snapshot(watched)
        t0 = time.monotonic()
        proc = self.launcher.start("wrk", cmd, capture=True)
        assert proc.popen.stdout is not None
        _, usage = wait_for(proc, duration + 30)
        wall = time.monotonic() - t0
        out = proc.popen.stdout.read().decode(errors="replace")
        proc.popen.stdout.close()
        self.launcher.procs.remove(proc)
        after = self.cpu_snapshot(watched)
        m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
        if not m:
            raise RuntimeError(f"wrk produced no result:\n{out}\n{proc.logfile and proc.logfile.read_text()[-2000:]}")
        w = json.loads(m.group(1))
        errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
        cpu = self.cpu_delta(before, after, wall, usage.ru_utime + usage.ru_stime)
        run = {
            "scenario": scenario, "target": target.name, "label": label or target.name,
            "rps": round(w["requests"] / (w["duration_us"] / 1e6), 1), "requests": w["requests"],
            "errors": errors, "p50_ms": w["p50_us"] / 1000, "p90_ms": w["p90_us"] / 1000,
            "p99_ms": w["p99_us"] / 1000, "max_ms": w["max_us"] / 1000, "connections": conns,
            "duration_s": duration, "cpu": cpu, "background_before": background,
        }
        if errors:
            log(f"  !! {errors} errors in this run: {w}")
        if record:
            self.results["runs"].append(run)
        log(f"  {scenario:8s} {run['label']:22s} {run['rps']:9.1f} req/s  p50 {run['p50_ms']:.2f} ms  "
            f"p99 {run['p99_ms']:.2f} ms  cpu {cpu}")
        return run

    def openloop(self, target: Target, scenario: str, rate: float, duration: float) -> dict[str, Any]:
        assert self.data is not None
        cmd = [sys.executable, str(BENCH / "openloop.py"), "--port", str(target.port), "--requests",
               str(self.data.files[scenario]), "--rate", f"{rate:.1f}", "--duration", f"{duration:g}",
               "--warmup", "1" if self.args.quick else "2", "--connections", "32"]
        background = self.wait_quiet([target])
        before = self.cpu_snapshot([target])
        t0 = time.monotonic()
        proc = self.launcher.start("openloop", cmd, capture=True)
        assert proc.popen.stdout is not None
        _, usage = wait_for(proc, duration + 40)
        wall = time.monotonic() - t0
        after = self.cpu_snapshot([target])
        out = proc.popen.stdout.read().decode()
        proc.popen.stdout.close()
        self.launcher.procs.remove(proc)
        if proc.popen.returncode != 0 or not out.strip():
            raise RuntimeError(f"openloop failed: {proc.logfile and proc.logfile.read_text()[-2000:]}")
        res = json.loads(out.strip().splitlines()[-1])
        res["target"] = target.name
        res["scenario"] = scenario
        res["background_before"] = background
        res["cpu"] = self.cpu_delta(before, after, wall, usage.ru_utime + usage.ru_stime)
        log(f"  open-loop {target.name:22s} at {rate:.0f}/s: achieved {res['achieved_rate']}/s, p50 {res['p50_ms']} "
            f"p99 {res['p99_ms']} p99.9 {res['p999_ms']} max {res['max_ms']} ms, errors {res['errors']}+"
            f"{res['timeouts']}+{res['non200']}, lag p99 {res['send_lag_p99_ms']} ms, gen cpu {res['cpu_share']}")
        return res

    def ab(self, scenario: str, targets: list[Target], rounds: int, duration: float, warmup: float,
           phase: str) -> list[list[dict[str, Any]]]:
        """Warm each target up, then ``rounds`` rounds; the order rotates every round."""
        for t in targets:
            self.wrk(t, scenario, warmup, record=False)
        out = []
        for r in range(rounds):
            order = targets[r % len(targets):] + targets[: r % len(targets)]
            if r % 2 == 1 and len(targets) == 2:
                order = list(reversed(targets))
            runs = {t.name: self.wrk(t, scenario, duration, label=t.name) for t in order}
            for run in runs.values():
                run["phase"] = phase
                run["round"] = r
            out.append([runs[t.name] for t in targets])
        return out

    # --- soak ---

    def soak(self, target: Target, seconds: float) -> dict[str, Any]:
        segment = 30.0 if seconds >= 120 else max(5.0, seconds / 4)
        n_segments = max(1, round(seconds / segment))
        samples: list[dict[str, Any]] = []
        worker_pids: set[int] = set()
        http_pid = target.proc.pid

        def sample() -> None:
            kids = children_map()
            pids = [http_pid, *descendants(http_pid, kids)]
            sandbox = {p for p in pids if is_worker(p)}
            # The template (sandbox/worker/template.py) forks the workers and is reported on its own;
            # its children share its command line, so it is told apart by its parent.
            parent = {c: p for p, cs in kids.items() for c in cs}
            tpl = {p for p in sandbox if parent.get(p) not in sandbox and "--template" in cmdline(p)}
            templates = [rss_mb(p) for p in tpl]
            workers = {p: rss_mb(p) for p in sandbox - tpl}
            worker_pids.update(workers)
            vals = [v for v in workers.values() if v is not None]
            samples.append({"t": round(time.monotonic() - t0, 1), "http": rss_mb(http_pid),
                            "workers": vals, "worker_pids": sorted(workers),
                            "template": next((t for t in templates if t is not None), None)})

        assert self.data is not None
        t0 = time.monotonic()
        sample()
        segments = []
        for i in range(n_segments):
            cmd = [shutil.which("wrk") or "/usr/bin/wrk", "-t1", f"-c{self.args.connections}", f"-d{max(1, round(segment))}s",
                   "--timeout", "5s", "-s", str(BENCH / "loadgen.lua"), f"http://127.0.0.1:{target.port}", "--",
                   str(self.data.files["mixed"]), str(i * 997)]
            proc = self.launcher.start("wrk-soak", cmd, capture=True)
            assert proc.popen.stdout is not None
            deadline = time.monotonic() + segment + 30
            while time.monotonic() < deadline:
                pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.popen.returncode = os.waitstatus_to_exitcode(status)
                    break
                sample()
                time.sleep(2.0)
            else:
                raise BenchTimeout("wrk (soak) overran")
            out = proc.popen.stdout.read().decode(errors="replace")
            proc.popen.stdout.close()
            self.launcher.procs.remove(proc)
            m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
            if not m:
                raise RuntimeError(f"wrk produced no result:\n{out}")
            w = json.loads(m.group(1))
            seg = {"segment": i, "rps": round(w["requests"] / (w["duration_us"] / 1e6), 1),
                   "p50_ms": w["p50_us"] / 1000, "p99_ms": w["p99_us"] / 1000, "requests": w["requests"],
                   "errors": w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]}
            segments.append(seg)
            log(f"  soak segment {i + 1}/{n_segments}: {seg['rps']} req/s p99 {seg['p99_ms']} ms, "
                f"HTTP RSS {samples[-1]['http']:.1f} MB, workers {[round(x, 1) for x in samples[-1]['workers']]}")
        sample()
        http_series = [s["http"] for s in samples if s["http"] is not None]
        worker_max = [max(s["workers"]) for s in samples if s["workers"]]
        mid = len(samples) // 2
        return {
            "seconds": round(time.monotonic() - t0, 1), "segments": segments,
            "requests": sum(s["requests"] for s in segments), "errors": sum(s["errors"] for s in segments),
            "http_rss_mb": {"start": http_series[0], "end": http_series[-1], "max": max(http_series),
                            "growth_second_half": http_series[-1] - http_series[mid]},
            "worker_rss_mb": {"start": samples[0]["workers"], "end": samples[-1]["workers"],
                              "max": max(worker_max) if worker_max else None,
                              "max_second_half_growth": (max(worker_max[mid:]) - max(worker_max[: mid + 1]))
                              if len(worker_max) > 2 else None},
            "worker_pids_seen": len(worker_pids),
            "template_rss_mb": {"start": samples[0]["template"], "end": samples[-1]["template"]},
            "samples": samples,
        }


# --- report --------------------------------------------------------------------------------


def background_cpu(seconds: float = 3.0) -> float:
    """Cores busy on the machine before the benchmark starts anything (other users' jobs)."""
    b0, _, _ = machine_ticks()
    time.sleep(seconds)
    b1, _, _ = machine_ticks()
    return round((b1 - b0) / CLK_TCK / seconds, 2)


def machine_facts(quick: bool = False) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run([shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True)
    import tornado

    return {
        "nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
        "python": platform.python_version(), "tornado": tornado.version,
        "wrk": (wrk_version.stdout or wrk_version.stderr).splitlines()[0] if (wrk_version.stdout or wrk_version.stderr) else "",
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "background_cores": background_cpu(1.0 if quick else 3.0),
        "mem_total_gb": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1),
    }


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_cpu(cpu: dict[str, float], name: str) -> str:
    per = [v for k, v in sorted(cpu.items()) if k.startswith(name + ":http#")]
    parts = [f"HTTP {cpu.get(name + ':http', 0):.2f}" + (f" ({' + '.join(f'{v:.2f}' for v in per)})" if per else "")]
    if name + ":workers" in cpu:
        parts.append(f"workers {cpu[name + ':workers']:.2f}")
    parts.append(f"redis {cpu.get('redis', 0):.2f}")
    parts.append(f"wrk {cpu.get('wrk', 0):.2f}")
    parts.append(f"other {cpu.get('other', 0):.2f}")
    return " / ".join(parts)


def per_request(runs: list[dict[str, Any]], name: str) -> str:
    http = med([r["cpu"].get(name + ":http", 0) / r["rps"] * 1e6 for r in runs])
    if not any(name + ":workers" in r["cpu"] for r in runs):
        return f"{http:.0f}"
    workers = med([r["cpu"].get(name + ":workers", 0) / r["rps"] * 1e6 for r in runs])
    return f"{http + workers:.0f} ({http:.0f} + {workers:.0f})"


def round_ratios(rounds: list[list[dict[str, Any]]], subject: str, other: str,
                 quiet_only: bool = False) -> list[float]:
    """subject's req/s / other's req/s, one value per round (the same minute, same machine)."""
    out = []
    for rnd in rounds:
        by = {r["target"]: r for r in rnd}
        if quiet_only and any(r["cpu"].get("other", 0) > QUIET_OK for r in rnd):
            continue
        if subject in by and other in by and by[other]["rps"]:
            out.append(by[subject]["rps"] / by[other]["rps"])
    return out


def ab_table(title: str, rounds: list[list[dict[str, Any]]]) -> str:
    """Medians per receiver over the rounds; ratio = the first receiver's (ScriptGate's)
    req/s / this receiver's req/s in the same round, median over rounds (and over the quiet
    rounds only). The first receiver compared (the next row) is the best hand-written one."""
    names = [r["target"] for r in rounds[0]]
    subject = names[0]
    quiet = [rnd for rnd in rounds if all(r["cpu"].get("other", 0) <= QUIET_OK for r in rnd)]
    rows = [f"**{title}**", "",
            f"| receiver | req/s | p50 ms | p99 ms | {subject} ÷ receiver, req/s: median (per round) | "
            f"same, quiet rounds only ({len(quiet)} of {len(rounds)}) | CPU µs per request (HTTP + workers) | "
            "CPU cores used (HTTP / workers / redis / wrk / other jobs) |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for i, name in enumerate(names):
        runs = [rnd[i] for rnd in rounds]
        mid = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
        if name == subject:
            ratio = quiet_ratio = "-"
        else:
            ratios = round_ratios(rounds, subject, name)
            qratios = round_ratios(rounds, subject, name, quiet_only=True)
            ratio = f"**{med(ratios):.2f}** ({', '.join(f'{x:.2f}' for x in ratios)})"
            quiet_ratio = f"{med(qratios):.2f}" if qratios else "n/a"
        rows.append(
            f"| {name} | {med([r['rps'] for r in runs]):.0f} | {med([r['p50_ms'] for r in runs]):.2f} | "
            f"{med([r['p99_ms'] for r in runs]):.2f} | {ratio} | {quiet_ratio} | {per_request(runs, name)} | "
            f"{fmt_cpu(mid['cpu'], name)} |"
        )
    return "\n".join(rows)


def summary_table(res: dict[str, Any]) -> str:
    """ScriptGate's req/s ÷ each receiver's (median of the per-round ratios), fair-cached first."""
    ab = res.get("ab", {})
    scenarios = [k for k in ("invite", "keyword", "after") if k in ab]
    if not scenarios:
        return ""
    present = {r["target"] for k in scenarios for r in ab[k][0]}
    others = [n for n in [*HW_NAMES.values(), SG_BASE] if n in present]
    out = ["**ScriptGate's throughput ÷ each receiver's** (req/s ratio per round, median over the rounds; "
           "> 1.00: ScriptGate is faster). fair-cached is the best hand-written receiver (async Redis, one "
           "SMISMEMBER, an in-process cache kept exact by client-side tracking); tornado-echo and tornado-noop "
           "are floors without logic.", "",
           "| workload | " + " | ".join(f"÷ {n}" for n in others) + " |",
           "|---|" + "---:|" * len(others)]
    for k in scenarios:
        cells = []
        for n in others:
            v = round_ratios(ab[k], SG, n)
            cells.append(f"**{med(v):.2f}**" if n == "fair-cached" and v else (f"{med(v):.2f}" if v else "n/a"))
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    lat = res.get("latency")
    if lat:
        p99: dict[str, list[float]] = {}
        for r in lat["runs"]:
            p99.setdefault(r["target"], []).append(r["p99_ms"])
        if SG in p99 and "fair-cached" in p99:
            out.append("")
            out.append(f"Open loop at {lat['rate']:.0f} req/s: p99 ScriptGate {med(p99[SG]):.2f} ms, fair-cached "
                       f"{med(p99['fair-cached']):.2f} ms ({med(p99[SG]) / med(p99['fair-cached']):.2f}x; "
                       "target <= 2x).")
    return "\n".join(out)


def scale_note(rounds: list[list[dict[str, Any]]]) -> str:
    """How the connections spread over the HTTP processes, run by run (from their CPU)."""
    splits = []
    lopsided = 0
    for rnd in rounds:
        for r in rnd:
            per = [v for k, v in sorted(r["cpu"].items()) if k.startswith(r["target"] + ":http#")]
            if len(per) > 1:
                splits.append(" + ".join(f"{v:.2f}" for v in per))
                if min(per) < 0.1 * max(sum(per), 1e-9):
                    lopsided += 1
    if not splits:
        return ""
    return (f"CPU of each HTTP process in the {len(splits)} runs with 2 processes: {'; '.join(splits)}. "
            f"In {lopsided} of them one process served (nearly) every connection (each process has its own "
            "SO_REUSEPORT socket, so the kernel spreads wrk's 16 keep-alive connections over them).")


def latency_table(lat: dict[str, Any], what: str) -> str:
    out = [f"**Latency at a fixed rate of {lat['rate']:.0f} req/s ({what}), open loop, 32 connections.** "
           "tornado-noop is a Tornado app that answers the plain ack without parsing or Redis: the floor of any "
           "Tornado receiver on this machine. Latency counts from the write when a connection was free, else from "
           "the scheduled time (queueing is charged to the server); \"strict\" counts every request from its "
           "scheduled time, so it also includes the generator's own timer lateness (send lag).", "",
           "| receiver | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | strict p99 ms | "
           "errors | generator send lag p99 ms / CPU share | other jobs' CPU (cores) | VM steal (cores) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    for r in lat["runs"]:
        out.append(f"| {r['target']} | {r['achieved_rate']:.0f} | {ms(r['p50_ms'])} | {ms(r['p90_ms'])} | "
                   f"{ms(r['p99_ms'])} | {ms(r['p999_ms'])} | {ms(r['max_ms'])} | {ms(r.get('strict_p99_ms'))} | "
                   f"{r['errors'] + r['timeouts'] + r['non200']} | {ms(r['send_lag_p99_ms'])} / {r['cpu_share']} | "
                   f"{r['cpu'].get('other', 0):.2f} | {r['cpu'].get('steal', 0):.3f} |")
    by_target: dict[str, list[float]] = {}
    for r in lat["runs"]:
        by_target.setdefault(r["target"], []).append(r["p99_ms"])
    out.append("")
    out.append("p99, median over the rounds: " + "; ".join(
        f"{t} **{med(v):.2f} ms** ({', '.join(f'{x:.2f}' for x in v)})" for t, v in by_target.items()))
    return "\n".join(out)


def report(res: dict[str, Any]) -> str:
    out = []
    m = res["machine"]
    out.append(f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_total_gb']} GB, Linux {m['kernel']}, "
               f"Python {m['python']}, Tornado {m['tornado']}, redis-server {res.get('redis_version')}, {m['wrk']}; "
               f"load average at start {' '.join(m['loadavg_at_start'])}, other jobs' CPU just before the run "
               f"{m['background_cores']} cores.")
    a = res["args"]
    out.append(f"Settings: wrk -t1 -c{a['connections']}, {a['duration']:g} s per run, {a['rounds']} alternated "
               f"round(s) after a warm-up, ScriptGate --sandbox-workers {a['sandbox_workers']}, hand-written JSON: "
               f"{a['hw_json']}. Ratios are per round (same minute, same machine), then the median; a round is quiet when "
               f"other jobs used <= {QUIET_OK} cores during each of its runs. CPU cores are from /proc (1.00 = one "
               "core busy for the whole run); p50/p99 from wrk are at saturation (closed loop, 16 connections).")
    out.append("")
    if "verdicts" in res:
        out.append(f"Reply check before timing (byte-identical replies from {SG} and "
                   f"{', '.join(res.get('checked', []))}): " + "; ".join(f"{k}: {v}" for k, v in res["verdicts"].items()))
        out.append("")
    summary = summary_table(res)
    if summary:
        out.append(summary)
        out.append("")
    titles = {
        "invite": "Invitation blocklist (1,000 blocked IDs, 3-5 invitees), real Redis, 1 HTTP process",
        "keyword": "Keyword filter: 2 KB text message against a 1,000-word set, real Redis, 1 HTTP process",
        "after": "After-callback flood (one INCR per callback, plain ack), real Redis, 1 HTTP process",
        "embedded": "Invitation blocklist: ScriptGate with the embedded store (no Redis) vs fair-cached on Redis",
        "scale": "Invitation blocklist: ScriptGate with 1 and 2 HTTP processes (same Redis)",
    }
    for key, title in titles.items():
        if key in res.get("ab", {}):
            out.append(ab_table(title, res["ab"][key]))
            out.append("")
            if key == "scale":
                out.append(scale_note(res["ab"][key]))
                out.append("")
    for key, what in (("latency", "half of ScriptGate's invite peak; target p99 <= 5 ms"),
                      ("latency_low", "a quarter of ScriptGate's invite peak, for context")):
        if key in res:
            out.append(latency_table(res[key], what))
            out.append("")
    if "soak" in res:
        s = res["soak"]
        out.append(f"**Soak: {s['seconds']:.0f} s of mixed traffic (invite + after + keyword, wrk -c{a['connections']}), "
                   f"{s['requests']} requests, {s['errors']} errors**")
        out.append("")
        segs = s["segments"]
        out.append("Throughput per segment (req/s): " + ", ".join(f"{x['rps']:.0f}" for x in segs)
                   + "; p99 per segment (ms): " + ", ".join(f"{x['p99_ms']:.1f}" for x in segs))
        out.append("")
        h, w = s["http_rss_mb"], s["worker_rss_mb"]
        out.append("| process | RSS start MB | RSS end MB | RSS max MB | growth over the second half MB |")
        out.append("|---|---:|---:|---:|---:|")
        out.append(f"| HTTP process | {h['start']:.1f} | {h['end']:.1f} | {h['max']:.1f} | {h['growth_second_half']:+.1f} |")
        ws, we = w["start"], w["end"]
        out.append(f"| each sandbox worker | {', '.join(f'{x:.1f}' for x in ws)} | {', '.join(f'{x:.1f}' for x in we)} | "
                   f"{w['max']:.1f} | {w['max_second_half_growth']:+.1f} (max over workers) |")
        tpl = s.get("template_rss_mb") or {}
        if tpl.get("start") is not None and tpl.get("end") is not None:
            out.append(f"| template process (forks the workers) | {tpl['start']:.1f} | {tpl['end']:.1f} | | |")
        out.append("")
        out.append(f"Sandbox worker processes seen during the soak: {s['worker_pids_seen']} "
                   f"(workers are recycled after a call limit, so PIDs change).")
        out.append("")
    return "\n".join(out)


# --- main ----------------------------------------------------------------------------------


PHASES = ["invite", "keyword", "after", "latency", "embedded", "scale", "soak"]
QUICK_PHASES = ["invite", "keyword", "after", "latency"]


def start_receivers(b: Bench, args: argparse.Namespace) -> tuple[Target, Target | None, dict[str, Target]]:
    log("starting redis-server, ScriptGate (1 HTTP process) and the hand-written receivers")
    b.start_redis()
    sg = b.start_scriptgate(SG)
    base = None
    if args.baseline_code:
        base = b.start_scriptgate(SG_BASE, prefix=BASE_PREFIX, code=Path(args.baseline_code).resolve())
    b.discover_kv_prefix()
    hws = {mode: b.start_handwritten(mode) for mode in HW_NAMES if mode in args.receivers}
    return sg, base, hws


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    b = Bench(args, tmp)
    res = b.results
    res["machine"] = machine_facts(args.quick)
    res["args"] = {k: v for k, v in vars(args).items() if k != "out"}
    phases = args.phases.split(",") if args.phases else (QUICK_PHASES if args.quick else PHASES)
    try:
        log(f"generating requests in {tmp}")
        b.data = make_data(tmp)
        sg, base, hws = start_receivers(b, args)
        checked = [t for m, t in hws.items() if m not in FLOORS] + ([base] if base else [])
        res["verdicts"] = b.check_same_replies(sg, checked)
        res["checked"] = [t.name for t in checked]
        log(f"replies identical ({', '.join(res['checked'])} = {SG}) on the check sample: {res['verdicts']}")
        d, w, rounds = args.duration, args.warmup, args.rounds
        fair = hws.get("fair-cached")
        everyone = [sg, *([base] if base else []), *hws.values()]
        with_fair = [fair] if fair else []
        res["ab"] = {}
        for scenario in ("invite", "keyword", "after"):
            if scenario in phases:
                log(f"phase {scenario}")
                res["ab"][scenario] = b.ab(scenario, everyone, rounds, d, w, scenario)
        if "latency" in phases:
            peak = med([rnd[0]["rps"] for rnd in res["ab"]["invite"]]) if "invite" in res["ab"] else args.rate
            rate = round(peak / 2)
            log(f"phase latency: open loop at {rate} req/s")
            noop = hws.get("noop")
            order = [sg, fair, noop, noop, fair, sg, sg, fair, noop][: 3 * args.latency_rounds]
            runs = [b.openloop(t, "invite", rate, args.latency_duration) for t in order if t is not None]
            res["latency"] = {"rate": rate, "runs": runs}
            if not args.quick:
                low = round(peak / 4)
                log(f"phase latency: open loop at {low} req/s (a quarter of the peak, for context)")
                res["latency_low"] = {"rate": low, "runs": [b.openloop(t, "invite", low, args.latency_duration)
                                                            for t in (sg, fair, noop) if t is not None]}
        for t in everyone:
            if t is not fair:
                b.launcher.stop(t.proc)
        if "embedded" in phases:
            log("phase embedded")
            sge = b.start_scriptgate("ScriptGate-embedded", embedded=True)
            res["ab"]["embedded"] = b.ab("invite", [sge, *with_fair], rounds, d, w, "embedded")
            b.launcher.stop(sge.proc)
        if "scale" in phases:
            log("phase scale")
            sg1 = b.start_scriptgate("ScriptGate-1proc")
            sg2 = b.start_scriptgate("ScriptGate-2proc", workers=2)
            res["ab"]["scale"] = b.ab("invite", [sg1, sg2, *with_fair], rounds, d, w, "scale")
            b.launcher.stop(sg2.proc)
            b.launcher.stop(sg1.proc)
        if "soak" in phases and args.soak > 0:
            log(f"phase soak: {args.soak:g} s")
            sgs = b.start_scriptgate("ScriptGate-soak")
            b.wrk(sgs, "mixed", w, record=False)
            res["soak"] = b.soak(sgs, args.soak)
            b.launcher.stop(sgs.proc)
    finally:
        b.launcher.cleanup()
    return res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ScriptGate vs hand-written Tornado receivers, side by side.")
    p.add_argument("--quick", action="store_true",
                   help="short runs, phases invite,keyword,after,latency only (about 3 minutes)")
    p.add_argument("--baseline-code", metavar="DIR",
                   help="also run the ScriptGate server of this checkout (e.g. a git worktree of the previous "
                        "commit), side by side, with this checkout's scripts and data")
    p.add_argument("--duration", type=float, help="seconds per timed wrk run (default 6, quick 3)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per receiver and phase (default 5, quick 2)")
    p.add_argument("--rounds", type=int, help="alternated rounds per phase (default 4, quick 1)")
    p.add_argument("--soak", type=float, help="soak seconds (default 60, quick 10; 300 for the 5-minute check)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--sandbox-spin-us", type=int, default=None,
                   help="ScriptGate --sandbox-spin-us (default: the server's own default)")
    p.add_argument("--sandbox-workers", type=int, default=4,
                   help="ScriptGate sandbox workers per HTTP process (default 4, the server's own default)")
    p.add_argument("--receivers", default=",".join(HW_NAMES),
                   help="comma-separated hand-written modes to run beside ScriptGate (default: all, "
                        f"{','.join(HW_NAMES)}; '' for none: ScriptGate against --baseline-code only)")
    p.add_argument("--hw-json", choices=["orjson", "stdlib"], default="orjson", help="hand-written receiver's JSON")
    p.add_argument("--rate", type=float, default=1000, help="open-loop rate when the invite phase is skipped")
    p.add_argument("--quiet-cores", type=float, default=0.25,
                   help="before each timed run, wait until other jobs use less than this many cores (default 0.25)")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="longest wait for a quiet machine before one run (default 20 s; 0: never wait)")
    p.add_argument("--quiet-budget", type=float,
                   help="total waiting for quiet over the whole run (default 60 s, quick 0)")
    p.add_argument("--phases", help=f"comma-separated subset of {','.join(PHASES)} "
                                    f"(default: all; quick: {','.join(QUICK_PHASES)})")
    p.add_argument("--out", help="also write the results as JSON to this file")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, request files)")
    args = p.parse_args(argv)
    args.receivers = [m for m in args.receivers.split(",") if m]
    unknown = set(args.receivers) - set(HW_NAMES)
    if unknown:
        p.error(f"--receivers: unknown {', '.join(sorted(unknown))} (known: {', '.join(HW_NAMES)})")
    q = args.quick
    args.duration = args.duration or (3.0 if q else 6.0)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if q else 5.0)
    args.rounds = args.rounds or (1 if q else 4)
    args.soak = args.soak if args.soak is not None else (10.0 if q else 60.0)
    args.latency_duration = 4.0 if q else 12.0
    if args.quiet_budget is None:
        args.quiet_budget = 0.0 if q else 60.0
    args.latency_rounds = 1 if q else 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool) and not Path(f"/usr/bin/{tool}").exists():
            print(f"bench_load: {tool} is needed (apt-get install {tool.split('-')[0]})", file=sys.stderr)
            return 2

    # Bounded run time: estimate, then a watchdog that aborts (and cleans up) past 1.5x + 2 min.
    receivers = 1 + len(args.receivers) + (1 if args.baseline_code else 0)
    per_phase = receivers * (args.warmup + args.rounds * args.duration) + 10
    budget = 60 + (3 if args.quick else 5) * per_phase + args.rounds * args.duration + 2 * args.warmup + (3 * args.latency_rounds + 3) * (
        args.latency_duration + 5) + args.soak + 30
    limit = int(budget * 1.5 + 120 + args.quiet_budget)

    def on_alarm(*_: Any) -> None:
        raise BenchTimeout(f"run exceeded its time limit of {limit} s")

    def on_term(*_: Any) -> None:
        raise Stop("terminated")

    signal.signal(signal.SIGALRM, on_alarm)
    # Ctrl-C must stop the run even when started in the background of a non-interactive
    # shell, which starts it with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    signal.alarm(limit)
    log(f"estimated run time {budget / 60:.1f} min (hard limit {limit / 60:.1f} min)")
    tmp = Path(tempfile.mkdtemp(prefix="scriptgate-bench-"))
    started = time.monotonic()
    try:
        res = run(args, tmp)
    except (KeyboardInterrupt, Stop, BenchTimeout) as exc:
        print(f"bench_load: stopped: {str(exc) or type(exc).__name__}; all processes stopped", file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    res["wall_s"] = round(time.monotonic() - started, 1)
    text = report(res)
    print(text)
    print(f"Run time {res['wall_s']:.0f} s. Command: python bench/bench_load.py "
          + shlex.join(sys.argv[1:] if argv is None else argv))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
