"""Stand-ins on the PATH of the documentation blocks run by ``test_docs_commands.py``.

``python -m tests.doc_shims NAME ARGS...``, called by the tiny ``scriptgate``, ``python3``
and ``python`` scripts that test writes into its temporary ``bin/``:

* ``scriptgate serve ...`` starts the real server in the background (its own session, output
  in ``.doctest/serve-N.log``) on the test's port, stops the one a previous ``serve`` started
  (a reader would have pressed Ctrl-C first), and returns once it is ready and has loaded the
  scripts of ``--scripts DIR``. A server that exits instead makes this exit with its status.
* ``scriptgate push|export|kv-snapshot ...`` talk to the test's server (their default
  ``--server`` is port 10006); every other ``scriptgate`` command runs as written.
* ``python3 -m pip install ...`` checks that what it names exists (the test's interpreter
  already has the project and its dependencies; installing would not be hermetic).
* ``python3 -m pytest ...`` checks its options and collects (``--collect-only``, in the project
  root) the tests it names, or ``tests/test_reply.py`` when it names none: running the suite
  from inside one of its tests would recurse, and the suite that runs this test has collected
  everything already. ``-n N`` becomes ``-p xdist`` (pytest-xdist must be installed).

Environment, set by the test: ``DOCTEST_PYTHON`` (the real interpreter), ``DOCTEST_ROOT``
(the project), ``DOCTEST_DIR`` (the document's working directory), ``DOCTEST_PORT``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

SERVER_CLIENTS = ("push", "export", "kv-snapshot")
SMALL_TEST_MODULE = "tests/test_reply.py"
READY_TIMEOUT = 45.0


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"doc_shims: {name} is not set (run through tests/test_docs_commands.py)")
    return value


def _state_dir() -> Path:
    path = Path(_env("DOCTEST_DIR")) / ".doctest"
    path.mkdir(exist_ok=True)
    return path


def _has_option(args: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


def _option(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists"; it has released its port, which is all that matters here.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    return True


def stop_server(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group (its own session), then SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            return


def stop_all(state: Path) -> None:
    """Stop every server the shims started for one document (used by the test's teardown)."""
    pids = state / "servers"
    if not pids.exists():
        return
    for line in pids.read_text().split():
        stop_server(int(line))


def _admin_get(port: int, path: str, token: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_scripts_loaded(port: int, token: str, scripts_dir: Path, proc: subprocess.Popen, log: Path) -> None:
    wanted = {p.stem for p in scripts_dir.glob("callback*.py")}
    deadline = time.monotonic() + READY_TIMEOUT
    seen: set[str] = set()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _fail_start(proc, log)
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, body = _admin_get(port, "/admin/scripts", token)
            if status == 401:
                sys.exit("doc_shims: the admin token was refused while waiting for --scripts to load")
            if status == 200:
                data = orjson.loads(body)
                rows = data.get("scripts", data) if isinstance(data, dict) else data
                seen = {r["command"] for r in rows if r.get("active_version")}
                if wanted <= seen:
                    return
        time.sleep(0.05)
    sys.exit(f"doc_shims: scripts not loaded after {READY_TIMEOUT:.0f} s: missing {sorted(wanted - seen)}\n"
             + log.read_text(errors="replace")[-4000:])


def _fail_start(proc: subprocess.Popen, log: Path) -> None:
    sys.stderr.write(log.read_text(errors="replace"))
    sys.exit(proc.returncode or 1)


def serve(args: list[str]) -> int:
    state = _state_dir()
    port = int(_env("DOCTEST_PORT"))
    current = state / "current"
    if current.exists():
        stop_server(int(current.read_text()))
        current.unlink()
    args = list(args)
    if not _has_option(args, "--port"):
        args += ["--port", str(port)]
    if not _has_option(args, "--host"):
        args += ["--host", "127.0.0.1"]
    if not _has_option(args, "--workers"):
        args += ["--workers", "1"]
    if not _has_option(args, "--sandbox-workers"):
        args += ["--sandbox-workers", "1"]
    number = len(list(state.glob("serve-*.log"))) + 1
    log = state / f"serve-{number}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [_env("DOCTEST_PYTHON"), "-m", "server.cli", "serve", *args],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    with (state / "servers").open("a") as pids:
        pids.write(f"{proc.pid}\n")
    current.write_text(str(proc.pid))
    deadline = time.monotonic() + READY_TIMEOUT
    while "ready on" not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            _fail_start(proc, log)
        if time.monotonic() > deadline:
            sys.exit(f"doc_shims: no 'ready on' after {READY_TIMEOUT:.0f} s\n" + log.read_text(errors="replace"))
        time.sleep(0.05)
    text = log.read_text(errors="replace")
    token = os.environ.get("SCRIPTGATE_ADMIN_TOKEN", "")
    for line in text.splitlines():
        if "admin token (generated" in line:
            token = line.rsplit(" ", 1)[1]
    scripts = _option(args, "--scripts")
    if scripts:
        _wait_scripts_loaded(int(_option(args, "--port") or port), token, Path(scripts), proc, log)
    sys.stderr.write(text)
    return 0


def scriptgate(args: list[str]) -> int:
    python = _env("DOCTEST_PYTHON")
    sub = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if sub is not None and args[sub] == "serve" and not {"-h", "--help"} & set(args):
        return serve(args[sub + 1:])
    if sub is not None and args[sub] in SERVER_CLIENTS and not _has_option(args, "--server"):
        args = [*args[:sub + 1], "--server", f"http://127.0.0.1:{_env('DOCTEST_PORT')}", *args[sub + 1:]]
    os.execv(python, [python, "-m", "server.cli", *args])
    return 1  # not reached


def pip(args: list[str]) -> int:
    if not args or args[0] != "install":
        sys.exit(f"doc_shims: only `pip install` is handled, not: pip {shlex.join(args)}")
    root = Path(_env("DOCTEST_ROOT"))
    rest = args[1:]
    while rest:
        arg = rest.pop(0)
        if arg in ("-r", "--requirement"):
            lock = Path(rest.pop(0))
            if not lock.is_file():
                sys.exit(f"doc_shims: pip: {lock} does not exist")
            pinned = [x for x in lock.read_text().splitlines() if "==" in x and not x.lstrip().startswith("#")]
            if not pinned:
                sys.exit(f"doc_shims: pip: {lock} pins nothing")
        elif arg in ("-e", "--editable"):
            if not (Path(rest.pop(0)) / "pyproject.toml").is_file():
                sys.exit("doc_shims: pip: -e names no project")
        elif arg.startswith("-"):
            continue  # --no-deps, -q, ...
        elif not (Path(arg) / "pyproject.toml").is_file():
            sys.exit(f"doc_shims: pip: {arg} is not a project directory")
    print(f"doc_shims: pip install checked, not run (the test environment has {root.name} installed)",
          file=sys.stderr)
    return 0


def pytest(args: list[str]) -> int:
    """Check the command's options and collect: its own module when it names no tests (the
    whole suite is what runs this, so collecting all of it again would only cost time)."""
    args = list(args)
    if _has_option(args, "-n"):  # needs pytest-xdist; no workers are needed to collect
        i = args.index("-n")
        del args[i:i + 2]
        args += ["-p", "xdist"]
    if not any(not a.startswith("-") and (i == 0 or args[i - 1] != "-p") for i, a in enumerate(args)):
        args.append(SMALL_TEST_MODULE)
    cmd = [_env("DOCTEST_PYTHON"), "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args]
    done = subprocess.run(cmd, cwd=_env("DOCTEST_ROOT"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:])
    else:
        print(f"doc_shims: pytest collected: {done.stdout.strip().splitlines()[-1]}", file=sys.stderr)
    return done.returncode


def main(argv: list[str]) -> int:
    name, args = argv[0], argv[1:]
    handlers = {"scriptgate": scriptgate, "pip": pip, "pytest": pytest}
    if name not in handlers:
        sys.exit(f"doc_shims: unknown shim {name}")
    return handlers[name](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
