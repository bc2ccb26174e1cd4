"""Offline and client subcommands of ``scriptgate``: run, sample, replay, check, push,
export, kv-snapshot. ``server.cli.main`` calls ``register(group)``; each click command hands its
options to a ``cmd_*`` function as an ``argparse.Namespace`` (the commands predate click).

Each command handles its own expected failures (one line on stderr, non-zero exit):
``server.cli.main`` may run as ``__main__``, in which case its exception classes are not the
ones this module could import, so nothing here relies on them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import orjson

from sandbox.host.pool import WorkerStartError
from server.catalog import Catalog, catalog
from server.cli.admin_client import AdminClient, AdminError, connect
from server.cli.common import connection_options, raw
from server.config import OPENIM_LINES, ConfigError
from server.isotime import iso_utc
from server.offline.env import OfflineError

EXIT_OK, EXIT_CHANGED, EXIT_ERROR = 0, 1, 2
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_EXPORT_LIMIT = 100_000  # the server's cap per request
KV_PAGE = 1000  # keys per GET /admin/kv page (the server's maximum)


def _err(message: str) -> None:
    print(f"scriptgate: {message}", file=sys.stderr)


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (OfflineError, AdminError, ConfigError) as exc:
            _err(str(exc))
        except WorkerStartError as exc:
            _err(f"the sandbox could not start: {exc}")
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            _err(f"{where}{exc.strerror or exc}")
        return EXIT_ERROR

    wrapper.__name__ = func.__name__
    return wrapper


# --- scripts on disk ---------------------------------------------------------------------


@dataclass
class ScriptFile:
    path: Path
    command: str | None  # None: the name is not <callbackCommand>.py and no --command
    source: str = ""
    problem: str | None = None  # unreadable / not UTF-8: reported like a compile error
    sha256: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)


def read_source(path: Path) -> str:
    """Read a script the way the server decodes an upload (UTF-8, BOM stripped, no NUL)."""
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise OfflineError(f"{path}: contains NUL bytes (not a text file?)")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise OfflineError(f"{path}:{line}: not UTF-8 text") from None


def collect_scripts(target: str, command: str | None, cat: Catalog) -> list[ScriptFile]:
    """``FILE`` or every ``*.py`` in ``DIR`` (not recursive), each with its command."""
    path = Path(target)
    if path.is_dir():
        if command:
            raise OfflineError("--command applies to a single FILE, not a directory of <callbackCommand>.py files")
        files = sorted(p for p in path.iterdir() if p.suffix == ".py" and p.is_file() and not p.name.startswith("_"))
        if not files:
            raise OfflineError(f"{target}: no .py files")
    elif path.is_file():
        files = [path]
    else:
        raise OfflineError(f"{target}: no such file or directory")
    if command and command not in cat:
        raise OfflineError(f"unknown callbackCommand {command!r}")
    out = []
    for f in files:
        cmd = command or (f.stem if f.stem in cat else None)
        item = ScriptFile(f, cmd)
        try:
            item.source = read_source(f)
            item.sha256 = hashlib.sha256(item.source.encode("utf-8", "surrogatepass")).hexdigest()
        except OfflineError as exc:
            item.problem = str(exc).removeprefix(f"{f}: ")
        out.append(item)
    return out


def check_scripts(items: list[ScriptFile], cat: Catalog, openim: str = "main") -> None:
    """Fill ``errors`` (policy and lint errors, with line/col) and ``warnings`` (lint) of
    every script, for the OpenIM line ``openim``."""
    from sandbox.policy import check_source
    from server import lint

    for item in items:
        if item.problem:
            item.errors.append({"line": 1, "col": 0, "message": item.problem})
            continue
        if item.command is None:
            item.errors.append({"line": 1, "col": 0, "message": (
                f"cannot tell the command: name the file <callbackCommand>.py (not {item.path.name}) "
                "or pass --command")})
        issues = check_source(item.source)
        item.errors.extend(i.to_wire() for i in issues)
        command = cat.get(item.command) if item.command else None
        if command is not None and not issues:
            for finding in lint.check(command, item.source, openim):
                (item.errors if finding.severity == lint.ERROR else item.warnings).append(finding.to_json())


def _print_issues(item: ScriptFile) -> None:
    for kind, issues in (("error", item.errors), ("warning", item.warnings)):
        for i in issues:
            print(f"{item.path}:{i['line']}:{i['col']}: {kind}: {i['message']}")


# --- check -------------------------------------------------------------------------------


@_guard
def cmd_check(args: argparse.Namespace) -> int:
    cat = catalog()
    items = collect_scripts(args.target, args.command, cat)
    check_scripts(items, cat, args.openim)
    errors = sum(len(i.errors) for i in items)
    warnings = sum(len(i.warnings) for i in items)
    failed = errors > 0 or (args.strict and warnings > 0)
    if args.json:
        doc = {
            "files": [
                {"path": str(i.path), "command": i.command, "errors": i.errors, "warnings": i.warnings} for i in items
            ],
            "errors": errors,
            "warnings": warnings,
            "ok": not failed,
        }
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for item in items:
            _print_issues(item)
        ok = sum(1 for i in items if not i.errors)
        print(f"checked {len(items)} script(s): {ok} ok, {errors} error(s), {warnings} warning(s)")
    return EXIT_CHANGED if failed else EXIT_OK


# --- run / replay ------------------------------------------------------------------------


def _load_script(path: str) -> tuple[str, str]:
    p = Path(path)
    if not p.is_file():
        raise OfflineError(f"{path}: no such file")
    return read_source(p), p.stem


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OfflineError(f"cannot read {path}: {exc.strerror or exc}") from None


def _print_compile_errors(script: str, issues: list[Any]) -> None:
    for i in issues:
        print(f"{script}:{i.line}:{i.col}: error: {i.message}", file=sys.stderr)


@_guard
def cmd_run(args: argparse.Namespace) -> int:
    from server.offline.env import namespace_note, open_env, run_sync

    source, stem = _load_script(args.script)
    cat = catalog()
    if args.sample:
        payload = _sample_for(args.command or stem, cat)
    else:
        raw = _read_input(args.payload)
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise OfflineError(f"{args.payload}: not valid JSON ({str(exc)[:120]})") from None
        if type(payload) is not dict:
            raise OfflineError(f"{args.payload}: the payload must be a JSON object (a callback request)")
        if type(payload.get("request")) is dict:  # a recording line: run its request
            payload = payload["request"]
    name = args.command or (stem if stem in cat else None) or payload.get("callbackCommand")
    if not isinstance(name, str) or name not in cat:
        raise OfflineError(
            "cannot tell the command: pass --command, name the script <callbackCommand>.py, "
            "or put callbackCommand in the payload"
        )
    command = cat.get(name)
    assert command is not None
    problem = command.check_request(payload)
    if problem:
        raise OfflineError(f"the payload does not fit {name}: {problem} (the server would answer 400)")

    async def go() -> tuple[Any, list[Any]]:
        env = await open_env(config_path=args.config, snapshot_path=args.kv, workers=1)
        async with env:
            issues = await env.check(source)
            if issues:
                return None, issues
            note = namespace_note(env, name)
            if note:
                print(note, file=sys.stderr)
            env.load(command, source)
            return await env.run(command, orjson.dumps(payload)), []

    outcome, issues = run_sync(go())
    if issues:
        _print_compile_errors(args.script, issues)
        return EXIT_ERROR
    error = outcome.error.to_wire() if outcome.error else None
    if args.json:
        doc = {
            "command": name,
            "verdict": outcome.verdict,
            "reply": outcome.reply,
            "error": error,
            "logs": outcome.logs,
            "kv_ops": outcome.kv_ops,
            "elapsed_ms": outcome.elapsed_ms,
        }
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for line in outcome.logs:
            print(f"log: {line}", file=sys.stderr)
        if error:
            print(f"script error ({error['kind']}): {error['message']}", file=sys.stderr)
        print(f"verdict: {outcome.verdict}  ({outcome.elapsed_ms:.1f} ms, {outcome.kv_ops} kv ops)", file=sys.stderr)
        sys.stdout.write(orjson.dumps(outcome.reply).decode() + "\n")
    return EXIT_ERROR if error else EXIT_OK


def _sample_for(name: str, cat: Catalog) -> dict[str, Any]:
    from server.samples import sample

    if name not in cat:
        raise OfflineError(
            f"--sample needs the script's command: name the script <callbackCommand>.py or pass --command "
            f"({name!r} is not a callbackCommand)"
        )
    return sample(name)


@_guard
def cmd_sample(args: argparse.Namespace) -> int:
    from server.samples import NoSample, names, sample_bytes

    if args.list:
        if args.command:
            raise OfflineError("give COMMAND or --list, not both")
        sys.stdout.write("".join(f"{name}\n" for name in names()))
        return EXIT_OK
    if not args.command:
        raise OfflineError("give a callbackCommand (`scriptgate sample --list` lists them)")
    try:
        data = sample_bytes(args.command)
    except NoSample as exc:
        raise OfflineError(str(exc)) from None
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return EXIT_OK


@_guard
def cmd_replay(args: argparse.Namespace) -> int:
    from server.offline import replay as rp
    from server.offline.env import default_workers, namespace_note, open_env, run_sync

    source, stem = _load_script(args.script)
    name = "<stdin>" if args.recordings == "-" else args.recordings
    if args.recordings == "-":
        records, line_errors = rp.read_recordings(sys.stdin.buffer)
    else:
        try:
            with open(args.recordings, "rb") as fh:
                records, line_errors = rp.read_recordings(fh)
        except OSError as exc:
            raise OfflineError(f"cannot read {args.recordings}: {exc.strerror or exc}") from None
    cat = catalog()
    try:
        command_name, how = rp.infer_command(cat, args.command, stem, records)
    except ValueError as exc:
        raise OfflineError(str(exc)) from None
    command = cat.get(command_name)
    assert command is not None
    records, bad_requests = rp.check_requests(command, records)
    line_errors = sorted(line_errors + bad_requests, key=lambda e: e.line)
    for e in line_errors[: rp.MAX_SHOWN_LINE_ERRORS]:
        print(f"{name}:{e.line}: {e.message}", file=sys.stderr)
    if len(line_errors) > rp.MAX_SHOWN_LINE_ERRORS:
        print(f"{name}: ... and {len(line_errors) - rp.MAX_SHOWN_LINE_ERRORS} more bad lines", file=sys.stderr)
    workers = args.workers or default_workers()
    # Two calls per worker: one runs while the host prepares or finishes the other.
    jobs = args.jobs or 2 * workers
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()

    async def go() -> Any:
        env = await open_env(config_path=args.config, snapshot_path=args.kv, workers=workers)
        async with env:
            issues = await env.check(source)
            if issues:
                return issues
            env.load(command, source)
            count = sum(1 for r in records if r.command == command_name)
            progress = rp.Progress(count) if show_progress and count else None
            result = await rp.replay(env, command, records, jobs=jobs, progress=progress)
            note = namespace_note(env, command_name)
            return result, env.notes + ([note] if note else [])

    result = run_sync(go())
    if isinstance(result, list):
        _print_compile_errors(args.script, result)
        return EXIT_ERROR
    (summary, changes), notes = result
    summary.corrupt = len(line_errors)
    if summary.skipped:
        notes.append(
            f"note: {sum(summary.skipped.values())} records of other commands were skipped "
            f"(the script is for {command_name}, from the {how})"
        )
    if summary.redacted:
        notes.append(
            f"note: {summary.redacted} records had redacted fields; the script saw {rp.REDACTED!r} in their place"
        )
    report = rp.ReplayReport(args.script, command_name, name, how, summary, changes, line_errors, notes)
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        if args.quiet:
            report.changes = []
        print(report.render())
    return report.exit_code


# --- client commands ---------------------------------------------------------------------


def _client(args: argparse.Namespace) -> AdminClient:
    return connect(args.server, args.token, getattr(args, "profile", None), args.timeout)


@_guard
def cmd_push(args: argparse.Namespace) -> int:
    cat = catalog()
    items = collect_scripts(args.target, args.command, cat)
    check_scripts(items, cat, args.openim)
    for item in items:
        _print_issues(item)
    errors = sum(len(i.errors) for i in items)
    warnings = sum(len(i.warnings) for i in items)
    if errors or (args.strict and warnings):
        why = f"{errors} error(s)" if errors else f"{warnings} warning(s) (--strict)"
        _err(f"nothing uploaded: {why}")
        return EXIT_CHANGED
    client = _client(args)
    failed = 0
    for item in items:
        assert item.command is not None
        live = client.get_or_none(f"/admin/scripts/{item.command}")
        live_version = live.get("version") if isinstance(live, dict) else None
        if isinstance(live, dict) and live.get("sha256") == item.sha256:
            print(f"{item.command}: unchanged (live v{live_version})")
            continue
        if args.dry_run:
            print(f"{item.command}: would upload {item.path} (live: {f'v{live_version}' if live_version else 'none'})")
            continue
        query = {"activate": "false"} if args.draft else None
        try:
            body = client.request("PUT", f"/admin/scripts/{item.command}", item.source.encode("utf-8"), query)
        except AdminError as exc:
            if exc.status in (413, 422):
                failed += 1
                for d in exc.details or []:
                    print(f"{item.path}:{d.get('line')}:{d.get('col')}: error: {d.get('message')}")
                _err(f"{item.command}: refused by the server: {exc}")
                continue
            raise
        if body.get("unchanged"):  # uploaded by someone else meanwhile: the server kept the live version
            print(f"{item.command}: unchanged (live v{body.get('version')})")
            continue
        state = "live" if body.get("active") else "draft"
        print(f"{item.command}: uploaded v{body.get('version')} ({state}, sha256 {str(body.get('sha256'))[:12]})")
        for w in body.get("warnings") or []:
            print(f"{item.path}:{w.get('line')}:{w.get('col')}: warning: {w.get('message')}")
    return EXIT_CHANGED if failed else EXIT_OK


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """A unix timestamp, or a duration back from now: 90s, 15m, 2h, 7d, 1w."""
    if value is None or value == "":
        return None
    m = DURATION_RE.match(value.strip())
    if m:
        return (now if now is not None else time.time()) - float(m.group(1)) * DURATION_S[m.group(2)]
    try:
        return float(value)
    except ValueError:
        raise OfflineError(f"--since must be a unix timestamp or a duration like 15m, 2h, 7d (got {value!r})") from None


class _Output:
    """stdout, or a file written next to its final name and renamed at the end, so an
    interrupted export never leaves a truncated file that looks complete."""

    def __init__(self, path: str | None) -> None:
        self.path = None if path in (None, "-") else Path(path)
        if self.path is None:
            self.fh = sys.stdout.buffer
        else:
            self.tmp = self.path.with_name(self.path.name + ".part")
            self.fh = open(self.tmp, "wb")  # closed in finish() or abort()

    def write(self, data: bytes) -> None:
        self.fh.write(data)

    def finish(self) -> None:
        self.fh.flush()
        if self.path is not None:
            self.fh.close()
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.path is not None:
            self.fh.close()
            self.tmp.unlink(missing_ok=True)


@_guard
def cmd_export(args: argparse.Namespace) -> int:
    cat = catalog()
    for c in args.commands:
        if c not in cat:
            raise OfflineError(f"unknown callbackCommand {c!r}")
    commands = args.commands or sorted(cat.commands)
    since = parse_since(args.since)
    if not 1 <= args.limit <= MAX_EXPORT_LIMIT:
        raise OfflineError(f"--limit must be between 1 and {MAX_EXPORT_LIMIT}")
    client = _client(args)
    out = _Output(args.output)
    counts: dict[str, int] = {}
    try:
        for c in commands:
            lines = 0
            tail = b"\n"
            for chunk in client.stream(f"/admin/recordings/{c}", {"limit": args.limit, "since": since}):
                out.write(chunk)
                lines += chunk.count(b"\n")
                tail = chunk[-1:]
            if tail != b"\n":  # keep one record per line across commands
                out.write(b"\n")
                lines += 1
            if lines:
                counts[c] = lines
        out.finish()
    except BaseException:
        out.abort()
        raise
    total = sum(counts.values())
    where = args.output if out.path is not None else "stdout"
    detail = ", ".join(f"{c}: {n}" for c, n in counts.items())
    print(f"exported {total} record(s) to {where}" + (f" ({detail})" if detail else ""), file=sys.stderr)
    return EXIT_OK


@_guard
def cmd_kv_snapshot(args: argparse.Namespace) -> int:
    client = _client(args)
    keys: list[dict[str, Any]] = []
    cursor: str = "0"
    seen_cursors: set[str] = set()
    missing: list[str] = []
    while True:
        page = client.request(
            "GET", "/admin/kv", query={"namespace": args.namespace, "prefix": args.prefix, "limit": KV_PAGE, "cursor": cursor}
        )
        for entry in page.get("keys") or []:
            key = entry["key"]
            # One key, quoted as a single path segment ("/" included).
            item = client.get_or_none(f"/admin/kv/{quote(key, safe='')}", {"namespace": args.namespace})
            if item is None:  # expired or deleted since the scan (or not addressable by URL)
                missing.append(key)
                continue
            keys.append({"key": item["key"], "type": item["type"], "value": item["value"], "ttl": item.get("ttl")})
        cursor = str(page.get("cursor") or "0")
        if cursor == "0" or cursor in seen_cursors:
            break
        seen_cursors.add(cursor)
    keys.sort(key=lambda k: k["key"])
    doc = {"namespace": args.namespace, "taken_at": iso_utc(time.time()), "server": client.server, "keys": keys}
    out = _Output(args.output)
    try:
        out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        out.finish()
    except BaseException:
        out.abort()
        raise
    where = args.output if out.path is not None else "stdout"
    print(f"snapshot of {len(keys)} key(s) in namespace {args.namespace!r} written to {where}", file=sys.stderr)
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
        print(f"warning: {len(missing)} listed key(s) could not be read and are not in the snapshot "
              f"(expired meanwhile?): {shown}", file=sys.stderr)
    return EXIT_OK


# --- registration ------------------------------------------------------------------------

REPLAY_EPILOG = """\
Per-record lines name each record by its operationID (or its line number):
  op-123  allow -> deny  (errCode 5001 "invitation refused")
  op-456  modify: invitedUserIDs ["a","b"] -> ["a"]
then a summary table: unchanged / allow -> deny / deny -> allow / modify changes /
deny changes / errors. "allow" includes "none" (no script was live when recorded);
"allow -> deny" includes modify -> deny (the table then names each transition, so the
totals add up to the lines). For after callbacks only verdicts are compared
(OpenIM ignores their replies). Fields are compared by their effect: returning the
value the request already had is no change (except fields OpenIM applies even when
absent, such as groupID in set-group-info); "[redacted]" values never count as changes.
Lines come in record order, whatever --jobs is.

Records of other commands are skipped and counted. The command is --command, else the
script's file name (<callbackCommand>.py), else the records' command if they all agree.
Corrupt lines are reported on stderr as FILE:LINE: reason; the rest is replayed.
KV: an in-memory store seeded from --kv; writes persist between records of the run.
With --jobs 1, records run strictly in file order (for counters and rate limits).

Exit status:
  0  every reply is unchanged
  1  some reply would change (verdict, changed fields, deny errCode/errMsg/errDlt,
     or a recorded error that no longer happens)
  2  corrupt or unusable lines, script errors in the new run that were not errors
     when recorded, nothing to replay, or the script does not compile
"""

CHECK_EPILOG = """\
Errors are what an upload would refuse, as FILE:LINE:COL: policy, syntax, no handle, and
literal results OpenIM cannot use (a field the command cannot change, "did you mean
nickName?"; roleLevel=1.0; {"nextCode": 1}; a member without userID; nil-pointer traps;
msgModify content that is not a JSON object; deny() codes outside 100..2^31-1).
Warnings: code OpenIM handles surprisingly (invite narrowing, field-name case, "" meaning
no change), commands the --openim line never sends, msgModify branches for non-Text
types. See docs/openim.md.

Exit status: 0 no errors (warnings allowed unless --strict), 1 errors (or warnings with
--strict), 2 the path cannot be read.
"""

OPENIM_HELP = ("the OpenIM line that calls the server: warn about commands it never sends and "
               "line-specific behaviour (default main; docs/openim.md)")


def _runner(func: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    def callback(**kw: Any) -> int:
        return func(argparse.Namespace(**kw))

    return callback


def register(group: click.Group) -> None:
    def command(name: str, func: Callable[[argparse.Namespace], int], **kw: Any) -> Callable[..., None]:
        """``command(name, func, help=...)(option, option, ...)``: adds ``name`` to the group,
        its options applied as if stacked as decorators, in the order given."""
        def attach(*decorators: Callable[[Any], Any]) -> None:
            f = _runner(func)
            for decorator in reversed(decorators):
                f = decorator(f)
            group.command(name, **kw)(f)
        return attach

    def run_checked(args: argparse.Namespace) -> int:
        if args.payload is not None and args.sample:
            raise click.UsageError("--payload FILE|-: not allowed with --sample")
        if args.payload is None and not args.sample:
            raise click.UsageError("give one of --payload FILE|- or --sample")
        return cmd_run(args)

    command(
        "run", run_checked,
        short_help="run a script once, offline, on one payload",
        help="Run SCRIPT once on a callback payload, offline, in the same sandbox, budgets and "
        "reply logic as the server, and print the reply JSON (logs and errors go to stderr).",
        epilog="The payload may also be one recording line (its request is used). "
        "Exit status: 0 the script ran (allow, modify or deny), 2 script error or bad input.",
    )(
        click.argument("script", metavar="SCRIPT"),
        click.option("--payload", metavar="FILE|-", help="callback request JSON (- for stdin)"),
        click.option("--sample", is_flag=True,
                     help="use the shipped sample request of the script's command (see `scriptgate sample`)"),
        click.option("--command", help="callbackCommand (default: from the file name or the payload)"),
        click.option("--kv", metavar="SNAPSHOT.json", help="seed the in-memory KV from a snapshot (see kv-snapshot)"),
        click.option("--config", metavar="FILE", help="server config file for budgets, deadline and failure policy"),
        click.option("--json", is_flag=True, help="print verdict, reply, error, logs and timing as one JSON document"),
    )

    command(
        "sample", cmd_sample,
        short_help="print a sample callback request",
        help="Print the sample request of a callbackCommand (realistic values, every field of the "
        "catalogue; OpenIM's documented example where it gives one) as JSON on stdout.",
        epilog=raw("Example: scriptgate sample callbackBeforeInviteJoinGroupCommand | "
                   "curl -s --data-binary @- localhost:10006/callbackExample/callbackBeforeInviteJoinGroupCommand"),
    )(
        click.argument("command", required=False, metavar="COMMAND"),
        click.option("--list", "list", is_flag=True, help="list the commands that have a sample, one per line"),
    )

    command(
        "replay", cmd_replay,
        short_help="replay recorded callbacks through a script and report changed verdicts",
        help="Run SCRIPT offline against recorded callbacks (NDJSON from `scriptgate export` or "
        "GET /admin/recordings/{command}) and report, per record and in total, how each reply would change.",
        epilog=raw(REPLAY_EPILOG),
    )(
        click.argument("script", metavar="SCRIPT"),
        click.option("--recordings", required=True, metavar="FILE|-", help="NDJSON recordings (- for stdin)"),
        click.option("--kv", metavar="SNAPSHOT.json", help="seed the in-memory KV from a snapshot"),
        click.option("--command", help="callbackCommand of the script"),
        click.option("--config", metavar="FILE", help="server config file for budgets, deadline and failure policy"),
        click.option("--json", is_flag=True, help="print one JSON document (per-record changes + summary)"),
        click.option("--quiet", "-q", is_flag=True, help="only the summary, no per-record lines"),
        click.option("--workers", type=int, metavar="N", help="sandbox worker processes (default: one per core, max 8)"),
        click.option("--jobs", type=int, metavar="N",
                     help="records in flight (default: 2 x --workers; 1 = strict file order)"),
        click.option("--progress/--no-progress", default=None,
                     help="progress bar on stderr (default: when stderr is a terminal)"),
    )

    command(
        "check", cmd_check,
        short_help="validate scripts offline",
        help="Validate FILE or every DIR/<callbackCommand>.py offline: policy errors with line/col; "
        "errors for literal results OpenIM cannot use (fields the command cannot change, wrong JSON types, "
        "nil-pointer traps, unusable deny() codes: the server refuses such uploads); warnings for known OpenIM "
        "surprises and for commands the --openim line never sends (docs/openim.md).",
        epilog=raw(CHECK_EPILOG),
    )(
        click.argument("target", metavar="FILE|DIR"),
        click.option("--command", help="callbackCommand for a FILE not named <callbackCommand>.py"),
        click.option("--strict", is_flag=True, help="fail on warnings too"),
        click.option("--json", is_flag=True, help="print one JSON document"),
        click.option("--openim", type=click.Choice(OPENIM_LINES), default="main", help=OPENIM_HELP),
    )

    command(
        "push", cmd_push,
        short_help="upload scripts to a running server",
        help="Check FILE or every DIR/<callbackCommand>.py offline, then upload each one whose sha256 "
        "differs from the live version (one step for CI). Nothing is uploaded if any script has errors.",
        epilog="Exit status: 0 done (or nothing to do), 1 a script was refused (offline or by the server), "
        "2 the server could not be reached, the token was refused, or bad arguments.",
    )(
        click.argument("target", metavar="FILE|DIR"),
        click.option("--command", help="callbackCommand for a FILE not named <callbackCommand>.py"),
        click.option("--dry-run", is_flag=True, help="check and compare with the server, upload nothing"),
        click.option("--draft", is_flag=True, help="store as drafts (?activate=false) instead of going live"),
        click.option("--strict", is_flag=True, help="treat warnings as errors"),
        click.option("--openim", type=click.Choice(OPENIM_LINES), default="main", help=OPENIM_HELP),
        connection_options,
    )

    command(
        "export", cmd_export,
        short_help="download recorded callbacks as NDJSON",
        help="Write recorded callbacks from a running server (GET /admin/recordings/{command}) "
        "as NDJSON, oldest first per command, ready for `scriptgate replay`.",
    )(
        click.argument("commands", nargs=-1, metavar="[COMMAND]..."),
        click.option("-o", "--output", metavar="FILE", help="output file (default: stdout)"),
        click.option("--limit", type=int, default=10_000, help="records per command (default 10000, max 100000)"),
        click.option("--since", metavar="WHEN", help="unix timestamp, or a duration back from now (15m, 2h, 7d)"),
        connection_options,
    )

    command(
        "kv-snapshot", cmd_kv_snapshot,
        short_help="save a namespace of the KV store as a JSON snapshot",
        help="Save the keys of one KV namespace from a running server as "
        '{"namespace", "keys": [{key, type, value, ttl}]}, for `run`/`replay --kv`.',
    )(
        click.option("-o", "--output", metavar="FILE", help="output file (default: stdout)"),
        click.option("--namespace", default="default", help="KV namespace (default: default)"),
        click.option("--prefix", default="", help="only keys starting with this"),
        connection_options,
    )
