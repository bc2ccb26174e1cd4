"""Sandbox worker process: runs scripts for ``sandbox.host.pool.WorkerPool``, one call at a time.

Started as a fresh interpreter (never forked from the HTTP process, so it never holds the
host's secrets) with a minimal environment and one end of a socketpair::

    python -P -s -B -m sandbox.worker --fd N --memory-mb M --parent PID [--test-hooks]

Life cycle: import everything, warm up (run a trivial, a failing and a refused script so
every lazily loaded module is in memory), freeze the heap for the GC, confine the process
(``sandbox.worker.confine``: rlimits, chroot, uid nobody, seccomp) and only then say ``ready`` and
serve. After confinement the process cannot open files, so anything not imported by then
is unavailable: the warm-up exists to make that set complete.

The host kills this process (SIGKILL) whenever a call overruns; nothing here needs to be
interruptible. Exceptions that escape a call are turned into results, never into a crash.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import socket
import sys
import time
from collections import OrderedDict
from typing import Any

import orjson

from sandbox import api, kvops, protocol
from sandbox.api import BUDGET, POLICY, Budgets, CompileIssue, KVDeadline, KVRefused, KVUnavailable, RunResult
from sandbox.policy import check_source
from sandbox.protocol import EXIT_FATAL, EXIT_OOM, EXIT_PROTOCOL, SCRIPT_CACHE_SIZE
from sandbox.worker import confine, containers, template
from sandbox.worker.readcache import MISS, ReadCache
from sandbox.worker.runtime import CompiledScript, PolicyRefused, compile_script, execute


class IpcKV:
    """The ``KVPort`` of one call: every operation is a round trip to the host, which owns
    the store connection and re-validates the operation, unless ``reads`` holds an answer
    the host allowed us to keep (see sandbox/worker/readcache.py). Closed when the call ends, so a
    leaked reference (a finalizer that somehow survives) cannot act in a later call.

    After a round trip it checks the call's deadline (``KVDeadline``): the sandbox itself
    reads the clock only now and then. If anything but a KV answer interrupts an operation
    (RecursionError or MemoryError at the script's stack or memory limit), the kept answers
    may be half-way through a change and a request may be out unanswered: the port closes
    for the rest of the call, ``settle`` reads the outstanding answer once the call is over,
    and ``interrupted`` tells the worker to retire after it."""

    __slots__ = ("_cache", "_chan", "_deadline", "_id", "_reads", "awaiting", "closed", "interrupted")

    def __init__(self, chan: protocol.BlockingChannel, call_id: int, cache: ReadCache, use_cache: bool,
                 deadline_ns: int) -> None:
        self._chan = chan
        self._id = call_id
        self._cache = cache  # the worker's: invalidations arriving mid-call always apply to it
        self._reads = cache if use_cache else None  # what this call may read from and fill
        self._deadline = deadline_ns  # time.monotonic_ns()
        self.closed = False
        self.interrupted = False
        self.awaiting = False  # a request is out and its answer not yet read

    def call(self, op: str, args: list[Any]) -> Any:
        if self.closed:
            raise KVUnavailable("kv used after the call ended" if not self.interrupted else
                                "kv unusable after an interrupted operation")
        try:
            return self._call(op, args)
        except (KVRefused, KVUnavailable, KVDeadline):
            raise
        except BaseException:
            self.closed = self.interrupted = True
            raise

    def post(self, op: str, args: list[Any]) -> None:
        """Send a write without waiting for its answer (``sandbox.policy.unawaited_writes``):
        the host runs it before anything we send after it, and a failure fails the call."""
        if self.closed:
            raise KVUnavailable("kv used after the call ended" if not self.interrupted else
                                "kv unusable after an interrupted operation")
        try:
            if self._reads is not None:
                self._reads.forget_key(args[0] if args else None)
            try:
                frame = protocol.encode({"t": protocol.KV, "id": self._id, "op": op, "args": args, "nr": True})
            except TypeError:
                raise KVRefused(f"kv.{op}: arguments are not plain data") from None
            self._chan.send_raw(frame)
        except KVRefused:
            raise
        except BaseException:
            self.closed = self.interrupted = True
            raise

    def _call(self, op: str, args: list[Any]) -> Any:
        reads = self._reads
        if reads is not None:
            value = reads.lookup(op, args)
            if value is not MISS:
                return value
            spec = kvops.OPS.get(op)
            if spec is None or spec.writes:
                reads.forget_key(args[0] if args else None)
        try:
            frame = protocol.encode({"t": protocol.KV, "id": self._id, "op": op, "args": args})
        except TypeError:
            raise KVRefused(f"kv.{op}: arguments are not plain data") from None
        self._chan.send_raw(frame)
        self.awaiting = True
        reply = self._reply(spin=True)
        self.awaiting = False
        if "ok" in reply:
            value = reply["ok"]
            if reads is not None and "c" in reply:
                reads.store(op, args, value, reply["c"], reply.get("w"))
            if time.monotonic_ns() > self._deadline:
                raise KVDeadline("the call's deadline passed during a KV round trip")
            return value
        text = str(reply.get("msg", ""))
        if reply.get("err") == protocol.KV_ERR:
            raise KVRefused(text)
        raise KVUnavailable(text)

    def _reply(self, spin: bool) -> dict[str, Any]:
        """The host's answer to our request, applying the invalidations sent before it."""
        while True:
            msg = self._chan.recv(spin=spin)
            if msg is None:
                os._exit(0)  # host gone
            reply = msg[0]
            if reply["t"] != protocol.INV:
                break
            apply_inv(reply, self._cache)
        if reply["t"] != protocol.KVR or reply.get("id") != self._id:
            os._exit(EXIT_PROTOCOL)
        return reply

    def settle(self) -> None:
        """After the call: if an interrupted op left a request unanswered, read (and drop)
        its answer now, at the worker's own shallow stack, so the host, which is still
        answering it, gets our "done" only after that (the channel stays in step)."""
        if self.awaiting:
            self._reply(spin=False)
            self.awaiting = False


def apply_inv(head: dict[str, Any], reads: ReadCache) -> None:
    if head.get("all") is True:
        reads.clear()
    else:
        reads.invalidate(head.get("k"))


class _WarmKV:
    """KV used only during warm-up: exercises the success and both error paths."""

    def __init__(self) -> None:
        self.n = 0

    def call(self, op: str, args: list[Any]) -> Any:
        self.n += 1
        if self.n == 2:
            raise KVRefused("warm-up refusal")
        if self.n == 3:
            raise KVUnavailable("warm-up outage")
        return None


_WARM_OK = """
def handle(req):
    n = 0
    for x in req["items"]:
        n += x
    d = {"a": [1, 2], "b": "s", "n": n}
    s = "x-" + str(n) + "-" + ",".join([str(i) for i in range(3)])
    if "x" in s and d.get("a") and s.startswith("x") and s.split("-")[0].upper() == "X":
        d["c"] = sorted([3, 1, 2]) + list(d.keys()) + [k for k, v in d.items()]
    text = f"{n:>5}|{s!r}|{1.5:.2f}" + "%s-%d" % ("a", 3)
    doc = json.loads(json.dumps({"k": [1, "\u00e9", None, True, 2.5]}, sort_keys=True))
    pat = re.compile("(?P<w>[a-z]+)-([0-9]+)")
    m = pat.search("abc-12")
    found = [m.group(1), m.group("w"), m.span()] if m else []
    found.append(re.findall("[0-9]", "a1b2"))
    found.append(re.sub("a", "b", "aaa"))
    digest = sha256("x") + md5("x") + sha1("x") + hmac_sha256("k", "m")
    t = time.time() + now()
    try:
        kv.get("k")
        kv.get("k")
    except Exception as e:
        log("kv error", str(e))
    log("n", n, 1.5, None, True, doc, found, len(digest), t > 0)
    return allow(items=[n], text=text.lower(), doc=doc)
"""
_WARM_RAISE = """
def handle(req):
    def f(d):
        return {}["missing"] if d else 1 / 0
    try:
        f(0)
    except ZeroDivisionError:
        pass
    try:
        [1][5]
    except IndexError as e:
        log(str(e))
    f(1)
"""
_WARM_DENY = """
def handle(req):
    kv.get("a")
    return deny(5001, "no", "because")
"""
_WARM_OUTAGE = """
def handle(req):
    kv.sismember("a", "b")
    try:
        kv.get("b")
    except Exception as e:
        log(str(e))
    kv.get("c")
"""
_WARM_DEEP = """
def handle(req):
    def r(n):
        return r(n + 1)
    return r(0)
"""
_WARM_LOOP = """
def handle(req):
    while True:
        pass
"""
_WARM_BAD_RESULT = """
def handle(req):
    return 42
"""
_WARM_SCRIPTS = (_WARM_OK, _WARM_RAISE, _WARM_DENY, _WARM_OUTAGE, _WARM_DEEP, _WARM_LOOP, _WARM_BAD_RESULT)


def warm_up() -> list[str]:
    """Run every path a call can take once, so lazy imports and caches (encodings,
    traceback formatting, RestrictedPython's compiler, re2, budget stops) happen before
    confinement. Best effort: returns what did not work as expected instead of failing
    the worker (``tests/test_worker_protocol.py`` requires it to be empty)."""
    problems: list[str] = []
    budgets = Budgets(wall_ms=50, steps=100_000)
    payload = b'{"items": [1, 2, 3], "s": "\\u00e9\\u003c"}\n'  # the JSON text, as calls get it
    for i, src in enumerate(_WARM_SCRIPTS):
        try:
            script = compile_script(src)
        except PolicyRefused as exc:
            problems.append(f"warm-up script {i} refused: {exc}")
            continue
        result = execute(script, payload, _WarmKV(), budgets)
        if result.error is not None and result.error.kind == POLICY:
            problems.append(f"warm-up script {i}: {result.error.message}")
        orjson.dumps(result.to_wire())
    for bad in ("def handle(req:\n", "import os\n", "def handle(req):\n    return req._x\n", "x = 1\n",
                "def handle(req):\n" + "    x = (" * 100 + "1" + ")" * 100 + "\n"):
        check_source(bad)
        try:
            compile_script(bad)
            problems.append("a refused warm-up script compiled")
        except PolicyRefused:
            pass
    try:
        orjson.loads(b"{bad")
    except orjson.JSONDecodeError:
        pass
    "\u00e9".encode()
    b"\xc3\xa9".decode()
    str(MemoryError())
    return problems


class _GcWatch:
    """Notes whether a collection of generation >= 1 ran: only those promote objects
    into the oldest generation, so only then must the post-call sweep be a full one."""

    def __init__(self) -> None:
        self.promoted = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] >= 1:
            self.promoted = True

    def sweep(self) -> None:
        # Anything a call left in reference cycles (a suspended generator with a
        # ``finally``, objects with finalizers) is collected now, inside that call's time
        # window and limits, never later during someone else's call. A full collection
        # costs ~30 us even on a frozen heap; a young one well under 1 us.
        promoted, self.promoted = self.promoted, False
        gc.collect(2 if promoted else 1)
        self.promoted = False  # our own collection does not count


class Worker:
    def __init__(self, chan: protocol.BlockingChannel, test_hooks: bool) -> None:
        self.chan = chan
        self.test_hooks = test_hooks
        self.limits = confine.CallLimits()
        self.gc = _GcWatch()
        gc.callbacks.append(self.gc)
        self.cache: OrderedDict[str, CompiledScript] = OrderedDict()
        self._budgets_raw: dict[str, Any] | None = None
        self._budgets = Budgets()
        self.reads = ReadCache()

    def budgets(self, raw: Any) -> Budgets:
        # Budgets rarely change between calls: skip re-validation when they are the same.
        if raw != self._budgets_raw:
            self._budgets = Budgets.from_wire(raw)
            self._budgets_raw = raw
        return self._budgets

    def serve(self) -> None:
        chan = self.chan
        while True:
            msg = chan.recv()
            if msg is None:
                return
            head, body = msg
            kind = head["t"]
            if kind == protocol.RUN:
                self.run(head, body)
            elif kind == protocol.INV:
                apply_inv(head, self.reads)
            elif kind == protocol.CHECK:
                self.check(head)
            elif kind == protocol.PROBE and self.test_hooks:
                from sandbox.worker import _probes

                chan.send({"t": protocol.PROBED, "id": head["id"], "r": _probes.run(head["name"], head)})
            else:
                os._exit(EXIT_PROTOCOL)

    def run(self, head: dict[str, Any], body: bytes) -> None:
        call_id = head["id"]
        sha = head["sha"]
        budgets = self.budgets(head["b"])
        # Limits go on before any work for this call, compilation included.
        cpu = self.limits.apply(budgets.wall_ms, budgets.memory_mb)
        if self.test_hooks and sha.startswith("test-hook:"):
            # Tests only: a fixed probe (sandbox.worker._probes) in place of a script, so the host's
            # kill and death-classification paths can be driven by things no script can do
            # (a C loop that ignores signals, a segfault, the kernel's SIGXCPU).
            from sandbox.worker import _probes

            value = _probes.run(sha.removeprefix("test-hook:"), {"wall_ms": budgets.wall_ms,
                                                                 "memory_mb": budgets.memory_mb, "mb": 4096})
            self.reply_done(call_id, RunResult(verdict=api.ALLOW, logs=[orjson.dumps(value).decode()]),
                            False, budgets, cpu)
            return
        script = self.cache.get(sha)
        result: RunResult | None = None
        cached = script is not None
        if script is None:
            source = head.get("src")
            if type(source) is not str:
                self.chan.send({"t": protocol.NEED, "id": call_id})
                return
            try:
                script = compile_script(source)
            except PolicyRefused as exc:
                first = exc.issues[0] if exc.issues else CompileIssue(1, 0, "refused")
                result = RunResult.failed(POLICY, f"line {first.line}, col {first.col}: {first.message}")
            except MemoryError:
                result = RunResult.failed(BUDGET, f"budget exceeded: memory (limit {budgets.memory_mb} MiB)")
            except RecursionError:
                result = RunResult.failed(POLICY, "script is nested too deeply to compile")
            else:
                self.cache[sha] = script
                cached = True
                if len(self.cache) > SCRIPT_CACHE_SIZE:
                    self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(sha)
        if result is None:
            assert script is not None
            scope = head.get("cs")
            if type(scope) is str:
                self.reads.enter(scope)
            kv = IpcKV(self.chan, call_id, self.reads, type(scope) is str,
                       time.monotonic_ns() + budgets.wall_ms * 1_000_000)
            try:
                # The body's JSON text: execute parses it into data only this call holds,
                # so it skips the defensive copy a shared payload would need.
                result = execute(script, body, kv, budgets)
            except MemoryError:
                result = RunResult.failed(BUDGET, f"budget exceeded: memory (limit {budgets.memory_mb} MiB)")
            except BaseException as exc:  # execute must not raise; never let a script kill the loop
                result = RunResult.failed(api.EXCEPTION, f"sandbox error: {type(exc).__name__}")
            finally:
                kv.closed = True
                script = None
            kv.settle()
            retire = kv.interrupted
        else:
            retire = False
        self.gc.sweep()
        self.reply_done(call_id, result, cached, budgets, cpu, retire)

    def reply_done(self, call_id: int, result: RunResult, cached: bool, budgets: Budgets, cpu: float,
                   retire: bool = False) -> None:
        # retire: this worker's state is unknown after the call (an interrupted KV op); the
        # host replaces it instead of sending it another call.
        extra = {"retire": True} if retire else {}
        try:
            wire = result.to_wire()
            if result.fields_json is not None:  # already encoded by execute: not again
                wire["fields"] = orjson.Fragment(result.fields_json)
            frame = protocol.encode({"t": protocol.DONE, "id": call_id, "r": wire, "cached": cached, "cpu": cpu,
                                     **extra})
        except MemoryError:
            result = RunResult.failed(BUDGET, f"budget exceeded: memory (limit {budgets.memory_mb} MiB)")
            frame = b""
        except (TypeError, orjson.JSONEncodeError):
            result = RunResult.failed(api.INVALID_RESULT, "result is not plain JSON data")
            frame = b""
        if not frame:
            try:
                frame = protocol.encode(
                    {"t": protocol.DONE, "id": call_id, "r": result.to_wire(), "cached": cached, "cpu": 0.0, **extra}
                )
            except MemoryError:
                os._exit(EXIT_OOM)
        if len(frame) > protocol.MAX_FROM_WORKER:
            result = RunResult.failed(BUDGET, "budget exceeded: result and logs are too large")
            frame = protocol.encode(
                {"t": protocol.DONE, "id": call_id, "r": result.to_wire(), "cached": cached, "cpu": 0.0, **extra}
            )
        self.chan.send_raw(frame)

    def check(self, head: dict[str, Any]) -> None:
        cpu_s = head.get("cpu_s", 2)
        self.limits.apply(int(cpu_s * 1000), Budgets().memory_mb)
        try:
            issues = check_source(head["src"])
            out = [[i.line, i.col, i.message] for i in issues]
        except MemoryError:
            out = [[1, 0, "compile exceeded the memory limit"]]
        except BaseException as exc:  # check_source must not raise; report rather than die
            out = [[1, 0, f"could not compile: {type(exc).__name__}"]]
        self.gc.sweep()
        self.chan.send({"t": protocol.CHECKED, "id": head["id"], "issues": out})


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sandbox.worker.main")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--memory-mb", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--spin-us", type=int, default=0)
    p.add_argument("--test-hooks", action="store_true")
    p.add_argument("--template", action="store_true", help="fork workers on request (sandbox.worker.template)")
    return p.parse_args(argv)


def _after_fork_in_child() -> None:
    # A forked worker must not replay the template's (or a sibling's) random sequence: the
    # collision check's sample (sandbox/worker/containers.py) must stay unpredictable to scripts.
    containers._random.seed()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    # Terminal signals go to the host, which decides; a worker is only ever SIGKILLed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = args.parent
    if args.template:
        # A template (sandbox.worker.template): warm up once, then fork workers on request. Only
        # a forked child gets past this block, with its own channel to the host.
        ctrl = socket.socket(fileno=args.fd)
        try:
            confine.die_with_parent(parent)
            os.chdir("/")
            problems = warm_up()
            gc.collect()
            gc.freeze()
        except BaseException as exc:
            with contextlib.suppress(OSError):
                ctrl.send(orjson.dumps({"t": "fatal", "msg": api.bounded(f"{type(exc).__name__}: {exc}")}))
            os._exit(EXIT_FATAL)
        parent = os.getpid()
        fd = template.serve_forks(ctrl, _after_fork_in_child)
        sock = socket.socket(fileno=fd)
    else:
        sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    chan = protocol.BlockingChannel(sock, spin_us=max(0, min(args.spin_us, 10_000)))
    try:
        extra: dict[str, Any] = {}
        if args.test_hooks:
            from sandbox.worker import _probes

            extra = _probes.before_confine()
        if not args.template:
            problems = warm_up()
        worker = Worker(chan, args.test_hooks)
        # Startup objects never need collecting: moving them to the permanent generation
        # makes the per-call gc.collect() scan only what calls create.
        gc.collect()
        gc.freeze()
        report = confine.confine(args.memory_mb, {sock.fileno()}, parent)
    except BaseException as exc:
        try:
            chan.send({"t": protocol.FATAL, "msg": api.bounded(f"{type(exc).__name__}: {exc}")})
        finally:
            os._exit(EXIT_FATAL)
    report.warnings.extend(problems)
    chan.send({"t": protocol.READY, "pid": os.getpid(), "confine": report.to_wire(), **extra})
    try:
        worker.serve()
    except protocol.ProtocolError:
        os._exit(EXIT_PROTOCOL)
    except MemoryError:
        os._exit(EXIT_OOM)
    os._exit(0)


if __name__ == "__main__":
    main()
