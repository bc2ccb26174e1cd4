"""Every shell example in README.md and docs/*.md, run as written against a real server.

Conventions (for whoever writes the documentation):

* Blocks fenced as ```` ```sh ````, ``bash``, ``shell`` or ``console`` are commands and are run;
  anything else (``text``, ``toml``, ``yaml``, ``python``, ...) is not. In a ``console`` block,
  lines starting with ``$ `` are the commands and the other lines are their expected output.
* One test per document. Its blocks run in order, each in a fresh ``bash`` with
  ``set -eo pipefail``, in a temporary directory that stands for the root of a clone (a copy of
  ``scripts/``; ``pyproject.toml``, ``requirements.lock``, ``bench/`` linked). Exported variables
  carry over to the next block (unexported ones and ``cd`` do not), as in a reader's terminal.
* A block must exit 0, unless it has a line ``# exit: N``: then it must exit N (with ``set -e``
  that is the status of its first failing command, so put that command last).
* ``# => EXPECTED`` shows what the commands above it print. Each one must match a later piece
  of the block's stdout than the previous one matched (pieces the document does not show may
  come in between). Stdout is split into JSON documents (an object or array, even one spanning
  lines or glued to the next without a newline, as curl prints them) and text lines.
  ``# => {...}`` or ``# => [...]`` must equal a JSON document, where the string ``"..."``
  stands for any value; any other ``# => text`` must equal a text line, ``...`` matching anything.
* The port ``10006`` is rewritten to a free port of the test and the demo token ``demo-secret`` to
  the test's own; ``SCRIPTGATE_ADMIN_TOKEN`` is exported with that token before the first block.
  Documented Redis addresses are rewritten to private servers the test starts (only those the
  document uses): ``redis://127.0.0.1:6379`` and ``unix:///run/redis/redis.sock`` (one
  redis-server), ``redis+sentinel://127.0.0.1:26379/mymaster`` (master, replica and Sentinel),
  ``redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002`` (three-node Cluster).
* ``scriptgate``, ``python3`` and ``python`` on the blocks' PATH are the stand-ins of
  ``tests/doc_shims.py``: ``scriptgate serve ...`` starts the real server in the background with
  those arguments (plus ``--host 127.0.0.1 --port <test port> --workers 1 --sandbox-workers 1``
  unless given) and returns when it is ready and its ``--scripts`` are loaded, replacing the
  server started before; ``push``/``export``/``kv-snapshot`` talk to that server;
  ``python3 -m pip install`` only checks what it names; ``python3 -m pytest`` checks its options
  and collects instead of running (it would recurse; see ``doc_shims``). Before the first block a server runs as
  ``scriptgate serve --scripts scripts/`` (the README's quick start), unless the document's
  first shell block starts its own or no block talks to a server (names port 10006 or runs
  ``push``, ``export`` or ``kv-snapshot``).
* An HTML comment ``<!-- doc-test: help-only ... -->`` right before a block marks commands too
  long to run here (benchmarks of minutes): each line runs with ``--help`` appended, which checks
  that the program exists and accepts the options given before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import doc_shims
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"sh", "bash", "shell", "console"}
DOC_PORT = "10006"
DOC_TOKEN = "demo-secret"
BLOCK_TIMEOUT = 90
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
DIRECTIVE = re.compile(r"<!--\s*doc-test:\s*([\w-]+)")
EXPECT = re.compile(r"^\s*# => (.*?)\s*$")
EXIT = re.compile(r"^\s*# exit: (\d+)\s*$")
ANY = "..."

REDIS_STANDALONE = "redis://127.0.0.1:6379"
REDIS_UNIX = "unix:///run/redis/redis.sock"
REDIS_SENTINEL = "redis+sentinel://127.0.0.1:26379/mymaster"
REDIS_CLUSTER = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"


@dataclass
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    directives: set[str] = field(default_factory=set)

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    def script(self) -> str:
        """The commands as bash runs them (``console`` prompts removed, help-only applied)."""
        if self.lang == "console":
            lines = []
            for line in self.text.splitlines():
                if line.startswith("$ "):
                    lines.append(line[2:])
                elif line.strip():
                    lines.append("# => " + line.strip())
            text = "\n".join(lines) + "\n"
        else:
            text = self.text
        if "help-only" in self.directives:
            runs = []
            for line in text.splitlines():
                words = shlex.split(line, comments=True)
                if words:
                    runs.append(shlex.join([*words, "--help"]) + " >/dev/null")
            text = "\n".join(runs) + "\n"
        return text

    def expected_exit(self) -> int:
        codes = [int(m.group(1)) for m in map(EXIT.match, self.text.splitlines()) if m]
        return codes[-1] if codes else 0

    def expectations(self) -> list[str]:
        return [m.group(1) for m in map(EXPECT.match, self.script().splitlines()) if m]


def parse_blocks(document: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = document.read_text(encoding="utf-8").splitlines()
    i = 0
    last_text = ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                last_text = lines[i]
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        if lang in SHELL_LANGS:
            directives = set(DIRECTIVE.findall(last_text))
            blocks.append(Block(document, start + 1, lang, "\n".join(body) + "\n", directives))
        last_text = ""
    return blocks


# --- matching documented output -------------------------------------------------------

def stdout_pieces(out: str) -> list[tuple[str, Any]]:
    """Split stdout into ("json", value) and ("text", line) pieces, in order."""
    decoder = json.JSONDecoder()
    pieces: list[tuple[str, Any]] = []
    pos, end = 0, len(out)
    while pos < end:
        while pos < end and out[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            break
        if out[pos] in "{[":
            try:
                value, stop = decoder.raw_decode(out, pos)
            except ValueError:
                pass
            else:
                pieces.append(("json", value))
                pos = stop
                continue
        stop = out.find("\n", pos)
        stop = end if stop < 0 else stop
        pieces.append(("text", out[pos:stop].strip()))
        pos = stop
    return pieces


def json_matches(expected: Any, actual: Any) -> bool:
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and expected.keys() == actual.keys()
                and all(json_matches(v, actual[k]) for k, v in expected.items()))
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(expected) == len(actual)
                and all(json_matches(e, a) for e, a in zip(expected, actual, strict=True)))
    return type(expected) is type(actual) and expected == actual


def piece_matches(expected: str, piece: tuple[str, Any]) -> bool:
    kind, value = piece
    if expected[:1] in "{[":
        return kind == "json" and json_matches(json.loads(expected), value)
    if kind != "text":
        return False
    pattern = ".*".join(re.escape(part) for part in expected.split(ANY))
    return re.fullmatch(pattern, value) is not None


def unmatched_expectations(expectations: list[str], out: str) -> list[str]:
    pieces = stdout_pieces(out)
    pos = 0
    for n, expected in enumerate(expectations):
        while pos < len(pieces) and not piece_matches(expected, pieces[pos]):
            pos += 1
        if pos == len(pieces):
            return expectations[n:]
        pos += 1
    return []


# --- running a document ---------------------------------------------------------------

PRELUDE = """set -eo pipefail
cd "$DOCTEST_DIR"
if [ -f .doctest/env ]; then . .doctest/env; fi
trap 'export -p > "$DOCTEST_DIR/.doctest/env.next"' EXIT
"""

PYTHON_SHIM = """#!/bin/sh
if [ "$1" = "-m" ] && { [ "$2" = "pip" ] || [ "$2" = "pytest" ]; }; then
  tool=$2; shift 2
  exec "$DOCTEST_PYTHON" -m tests.doc_shims "$tool" "$@"
fi
exec "$DOCTEST_PYTHON" "$@"
"""

# Only the commands doc_shims changes pay for its interpreter; the rest run as written.
SCRIPTGATE_SHIM = """#!/bin/sh
for arg in "$@"; do
  case "$arg" in
    -*) ;;
    serve|push|export|kv-snapshot) exec "$DOCTEST_PYTHON" -m tests.doc_shims scriptgate "$@" ;;
    *) break ;;
  esac
done
exec "$DOCTEST_PYTHON" -m server.cli "$@"
"""


class RedisBackends:
    """Private Redis servers for the documented addresses one document uses."""

    def __init__(self, text: str) -> None:
        from redis_servers import Cluster, SentinelSetup, Standalone

        self.rewrites: dict[str, str] = {}
        self.started: list[Any] = []
        if REDIS_STANDALONE in text or REDIS_UNIX in text:
            _require_redis()
            standalone = self._keep(Standalone())
            self.rewrites[REDIS_STANDALONE] = standalone.url
            self.rewrites[REDIS_UNIX] = standalone.unix_url
        if REDIS_SENTINEL in text:
            _require_redis()
            self.rewrites[REDIS_SENTINEL] = self._keep(SentinelSetup(service="mymaster")).url
        if REDIS_CLUSTER in text:
            _require_redis()
            self.rewrites[REDIS_CLUSTER] = self._keep(Cluster()).url

    def _keep(self, backend: Any) -> Any:
        self.started.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.started:
            backend.close()


def _require_redis() -> None:
    from conftest_redis import require_redis

    require_redis()


@dataclass
class DocRun:
    document: Path
    workdir: Path
    port: int
    token: str
    rewrites: dict[str, str]
    bin_dir: Path
    home: Path

    @classmethod
    def prepare(cls, document: Path, tmp_path: Path, rewrites: dict[str, str]) -> DocRun:
        workdir = tmp_path / "clone"
        workdir.mkdir()
        shutil.copytree(ROOT / "scripts", workdir / "scripts")
        for name in ("pyproject.toml", "requirements.lock", "bench", "server", "sandbox", "tests"):
            (workdir / name).symlink_to(ROOT / name)
        (workdir / ".doctest").mkdir()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name, text in (("scriptgate", SCRIPTGATE_SHIM), ("python3", PYTHON_SHIM), ("python", PYTHON_SHIM)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        (tmp_path / "home").mkdir()
        return cls(document, workdir, free_port(), "doc-" + secrets.token_hex(12), rewrites, bin_dir, tmp_path / "home")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SCRIPTGATE_", "PYTEST_", "COV_"))}
        env.update(
            PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
            HOME=str(self.home),
            PYTHONPATH=str(ROOT),
            DOCTEST_PYTHON=sys.executable,
            DOCTEST_ROOT=str(ROOT),
            DOCTEST_DIR=str(self.workdir),
            DOCTEST_PORT=str(self.port),
            SCRIPTGATE_ADMIN_TOKEN=self.token,
        )
        return env

    def rewrite(self, text: str) -> str:
        text = re.sub(rf"(?<!\d){DOC_PORT}(?!\d)", str(self.port), text)
        text = text.replace(DOC_TOKEN, self.token)
        for documented, real in self.rewrites.items():
            text = text.replace(documented, real)
        return text

    def run_bash(self, script: str) -> subprocess.CompletedProcess[str]:
        state = self.workdir / ".doctest"
        path = state / "block.sh"
        path.write_text(PRELUDE + script)
        proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc", str(path)], cwd=self.workdir, env=self.env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,  # so a block that hangs is stopped with everything it started
        )
        try:
            out, err = proc.communicate(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n(doc test: stopped after {BLOCK_TIMEOUT} s)"
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if (state / "env.next").exists():
            (state / "env.next").replace(state / "env")
        return done

    def server_logs(self) -> str:
        logs = sorted((self.workdir / ".doctest").glob("serve-*.log"))
        return "".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs[-2:])

    def check(self, block: Block) -> str | None:
        """Run one block; a description of what went wrong, or None."""
        script = self.rewrite(block.script())
        done = self.run_bash(script)
        want = block.expected_exit()
        report = (f"\n--- script\n{script}--- exit {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
                  f"\n--- stderr\n{done.stderr[-4000:]}\n{self.server_logs()}")
        if done.returncode != want:
            return f"{block.where}: expected exit {want}, got {done.returncode}{report}"
        missing = unmatched_expectations([self.rewrite(e) for e in block.expectations()], done.stdout)
        if missing:
            return f"{block.where}: documented output not printed: {missing[0]!r}{report}"
        return None

    def stop(self) -> None:
        doc_shims.stop_all(self.workdir / ".doctest")


def talks_to_server(blocks: list[Block]) -> bool:
    text = "".join(b.text for b in blocks)
    return DOC_PORT in text or re.search(r"scriptgate (push|export|kv-snapshot)\b", text) is not None


@pytest.fixture
def doc_run(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocRun]:
    document: Path = request.param
    text = "".join(b.text for b in parse_blocks(document))
    backends = RedisBackends(text)
    run = DocRun.prepare(document, tmp_path, backends.rewrites)
    try:
        yield run
    finally:
        run.stop()
        backends.close()


@pytest.mark.parametrize("doc_run", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS], indirect=True)
def test_document_commands(doc_run: DocRun) -> None:
    blocks = parse_blocks(doc_run.document)
    if not blocks:
        return  # a page of prose and tables only: nothing to run (not a skip: nothing is left out)
    if "scriptgate serve" not in blocks[0].text and talks_to_server(blocks):
        started = doc_run.run_bash("scriptgate serve --scripts scripts/\n")
        assert started.returncode == 0, f"default server did not start:\n{started.stderr}"
    # Every block runs even after one failed, so one run lists every broken example.
    failures = [f for f in map(doc_run.check, blocks) if f]
    if failures:
        where = ", ".join(f.split(":", 2)[0] + ":" + f.split(":", 2)[1] for f in failures)
        pytest.fail(f"{len(failures)} of {len(blocks)} blocks failed ({where})\n\n" + "\n\n".join(failures))


def test_documents_show_the_ci_gate_and_version() -> None:
    """The commands the README promises are among those run above."""
    readme = "".join(b.text for b in parse_blocks(ROOT / "README.md"))
    for command in ("scriptgate check --strict scripts/", "scriptgate --version",
                    "python3 -m pip install . && scriptgate serve --scripts scripts/",
                    "python3 -m pip install -r requirements.lock && python3 -m pip install --no-deps -e . "
                    "&& python3 -m pytest -n 2 -q"):
        assert command in readme, command
    docs = {d.name for d in DOCUMENTS}
    for page in ("admin-api.md", "configuration.md", "storage-and-faults.md", "recording-replay-ci.md",
                 "sandbox.md", "performance.md", "architecture.md"):
        assert page in docs, page


def test_documented_commands_avoid_names_that_do_not_exist() -> None:
    """Examples name files they create or that ship; curl shows its errors (-sS)."""
    for document in DOCUMENTS:
        for block in parse_blocks(document):
            for bad in ("my_new_rules.py", "req.json", "my.py"):
                assert not re.search(rf"(?<![\w-]){re.escape(bad)}", block.text), f"{block.where}: {bad}"
            for line in block.text.replace("\\\n", " ").splitlines():
                if re.search(r"(^|[|;&(])\s*curl\s", line) and not re.search(r"\s-\w*sS", line):
                    pytest.fail(f"{block.where}: curl without -sS: {line}")


# --- the conventions themselves ---------------------------------------------------------

def test_stdout_pieces_split_glued_json_and_text() -> None:
    out = '{"a":1}{"b":[1,2]}\nscriptgate 0.2.0\n{\n  "c": "x"\n}\n{not json\n'
    assert stdout_pieces(out) == [("json", {"a": 1}), ("json", {"b": [1, 2]}), ("text", "scriptgate 0.2.0"),
                                  ("json", {"c": "x"}), ("text", "{not json")]


def test_expectations_match_in_order_with_wildcards() -> None:
    out = '{"reply":{"errCode":0},"elapsed_ms":0.4}\n401\nready on port 5\n'
    assert unmatched_expectations(['{"reply":{"errCode":0},"elapsed_ms":"..."}', "401", "ready on ..."], out) == []
    assert unmatched_expectations(["401", '{"reply":{"errCode":0},"elapsed_ms":"..."}'], out) != []
    assert unmatched_expectations(['{"reply":{"errCode":0}}'], out) != []  # keys must be the same
    assert unmatched_expectations(['{"elapsed_ms":"0.4"}'], '{"elapsed_ms":0.4}') != []  # and types


def test_blocks_parse_language_exit_and_directives(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("text\n\n```sh\nfalse\n# exit: 1\n```\n\n```toml\na = 1\n```\n"
                   "<!-- doc-test: help-only (slow) -->\n```bash\npython3 bench/x.py --soak 3  # long\n```\n"
                   "```console\n$ echo hi\nhi\n```\n")
    blocks = parse_blocks(doc)
    assert [b.lang for b in blocks] == ["sh", "bash", "console"]
    assert blocks[0].expected_exit() == 1 and blocks[1].expected_exit() == 0
    assert blocks[1].script() == "python3 bench/x.py --soak 3 --help >/dev/null\n"
    assert blocks[2].script() == "echo hi\n# => hi\n" and blocks[2].expectations() == ["hi"]
