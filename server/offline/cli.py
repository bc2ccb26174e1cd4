"""Offline and client subcommands of ``scriptgate``: run, sample, replay, check, push,
export, kv-snapshot. ``server.cli.main`` calls ``register(group)``; each click command hands its
options to a ``cmd_*`` function as an ``argparse.Namespace`` (the commands predate click).

The commands that run scripts (run, replay) call the script use cases of
server/service/scripts.py on the offline environment (server/offline/env.py); the files they
read are server/offline/files.py's, what they print server/offline/report.py's, and the
commands that talk to a server (push, export, kv-snapshot) live in server/offline/remote.py.
Each command handles its own expected failures (server/offline/guard.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import click

from server.catalog import Catalog, Command, catalog
from server.cli.common import connection_options, raw
from server.config import OPENIM_LINES
from server.offline.env import OfflineError
from server.offline.files import check_scripts, collect_scripts, load_script, read_payload
from server.offline.guard import EXIT_CHANGED, EXIT_ERROR, EXIT_OK, guard
from server.offline.remote import cmd_export, cmd_kv_snapshot, cmd_push
from server.offline.report import (
    print_check,
    print_compile_errors,
    print_json,
    print_line_errors,
    print_run,
    replay_notes,
)
from server.service import scripts

# --- check -------------------------------------------------------------------------------


@guard
def cmd_check(args: argparse.Namespace) -> int:
    cat = catalog()
    items = collect_scripts(args.target, args.command, cat)
    check_scripts(items, cat, args.openim)
    errors = sum(len(i.errors) for i in items)
    warnings = sum(len(i.warnings) for i in items)
    failed = errors > 0 or (args.strict and warnings > 0)
    print_check(items, args.json, failed)
    return EXIT_CHANGED if failed else EXIT_OK


# --- run / sample / replay ---------------------------------------------------------------


def _sample_for(name: str, cat: Catalog) -> dict[str, Any]:
    from server.samples import sample

    if name not in cat:
        raise OfflineError(
            f"--sample needs the script's command: name the script <callbackCommand>.py or pass --command "
            f"({name!r} is not a callbackCommand)"
        )
    return sample(name)


def _run_command(args: argparse.Namespace, stem: str, payload: dict[str, Any], cat: Catalog) -> Command:
    """The command a ``run`` is for: --command, the script's name, or the payload's."""
    name = args.command or (stem if stem in cat else None) or payload.get("callbackCommand")
    command = cat.get(name) if isinstance(name, str) else None
    if command is None:
        raise OfflineError(
            "cannot tell the command: pass --command, name the script <callbackCommand>.py, "
            "or put callbackCommand in the payload"
        )
    problem = command.check_request(payload)
    if problem:
        raise OfflineError(f"the payload does not fit {command.name}: {problem} (the server would answer 400)")
    return command


@guard
def cmd_run(args: argparse.Namespace) -> int:
    from server.offline.env import namespace_note, open_env, run_sync

    source, stem = load_script(args.script)
    cat = catalog()
    payload = _sample_for(args.command or stem, cat) if args.sample else read_payload(args.payload)
    command = _run_command(args, stem, payload, cat)

    async def go() -> Any:
        env = await open_env(config_path=args.config, snapshot_path=args.kv, workers=1)
        async with env:
            def loaded() -> None:
                note = namespace_note(env, command.name)
                if note:
                    print(note, file=sys.stderr)

            return await scripts.run_offline(env, command, source, payload, loaded)

    try:
        outcome = run_sync(go())
    except scripts.InvalidScript as exc:
        print_compile_errors(args.script, exc.details or [])
        return EXIT_ERROR
    print_run(command.name, outcome, args.json)
    return EXIT_ERROR if outcome.error else EXIT_OK


@guard
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


def _read_recordings(path: str) -> tuple[list[Any], list[Any]]:
    from server.offline import replay as rp

    if path == "-":
        return rp.read_recordings(sys.stdin.buffer)
    try:
        with open(path, "rb") as fh:
            return rp.read_recordings(fh)
    except OSError as exc:
        raise OfflineError(f"cannot read {path}: {exc.strerror or exc}") from None


@guard
def cmd_replay(args: argparse.Namespace) -> int:
    from server.offline import replay as rp
    from server.offline.env import default_workers, namespace_note, open_env, run_sync

    source, stem = load_script(args.script)
    name = "<stdin>" if args.recordings == "-" else args.recordings
    records, line_errors = _read_recordings(args.recordings)
    cat = catalog()
    try:
        command_name, how = rp.infer_command(cat, args.command, stem, records)
    except ValueError as exc:
        raise OfflineError(str(exc)) from None
    command = cat.get(command_name)
    assert command is not None
    records, bad_requests = rp.check_requests(command, records)
    line_errors = sorted(line_errors + bad_requests, key=lambda e: e.line)
    print_line_errors(name, line_errors, rp.MAX_SHOWN_LINE_ERRORS)
    workers = args.workers or default_workers()
    # Two calls per worker: one runs while the host prepares or finishes the other.
    jobs = args.jobs or 2 * workers
    count = sum(1 for r in records if r.command == command_name)
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()

    async def go() -> Any:
        env = await open_env(config_path=args.config, snapshot_path=args.kv, workers=workers)
        async with env:
            progress = rp.Progress(count) if show_progress and count else None
            result = await scripts.replay(env, command, source, records, jobs=jobs, progress=progress)
            note = namespace_note(env, command_name)
            return result, env.notes + ([note] if note else [])

    try:
        (summary, changes), notes = run_sync(go())
    except scripts.InvalidScript as exc:
        print_compile_errors(args.script, exc.details or [])
        return EXIT_ERROR
    summary.corrupt = len(line_errors)
    notes += replay_notes(summary, command_name, how, rp.REDACTED)
    report = rp.ReplayReport(args.script, command_name, name, how, summary, changes, line_errors, notes)
    if args.json:
        print_json(report.to_json())
    else:
        if args.quiet:
            report.changes = []
        print(report.render())
    return report.exit_code


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


def _command(group: click.Group, name: str, func: Callable[[argparse.Namespace], int],
             *options: Callable[[Any], Any], **kw: Any) -> None:
    """Add ``name`` to the group, its ``options`` applied as if stacked as decorators in the
    order given."""
    f = _runner(func)
    for decorator in reversed(options):
        f = decorator(f)
    group.command(name, **kw)(f)


def _run_checked(args: argparse.Namespace) -> int:
    if args.payload is not None and args.sample:
        raise click.UsageError("--payload FILE|-: not allowed with --sample")
    if args.payload is None and not args.sample:
        raise click.UsageError("give one of --payload FILE|- or --sample")
    return cmd_run(args)


def _register_run_and_sample(group: click.Group) -> None:
    _command(
        group, "run", _run_checked,
        click.argument("script", metavar="SCRIPT"),
        click.option("--payload", metavar="FILE|-", help="callback request JSON (- for stdin)"),
        click.option("--sample", is_flag=True,
                     help="use the shipped sample request of the script's command (see `scriptgate sample`)"),
        click.option("--command", help="callbackCommand (default: from the file name or the payload)"),
        click.option("--kv", metavar="SNAPSHOT.json", help="seed the in-memory KV from a snapshot (see kv-snapshot)"),
        click.option("--config", metavar="FILE", help="server config file for budgets, deadline and failure policy"),
        click.option("--json", is_flag=True, help="print verdict, reply, error, logs and timing as one JSON document"),
        short_help="run a script once, offline, on one payload",
        help="Run SCRIPT once on a callback payload, offline, in the same sandbox, budgets and "
        "reply logic as the server, and print the reply JSON (logs and errors go to stderr).",
        epilog="The payload may also be one recording line (its request is used). "
        "Exit status: 0 the script ran (allow, modify or deny), 2 script error or bad input.",
    )
    _command(
        group, "sample", cmd_sample,
        click.argument("command", required=False, metavar="COMMAND"),
        click.option("--list", "list", is_flag=True, help="list the commands that have a sample, one per line"),
        short_help="print a sample callback request",
        help="Print the sample request of a callbackCommand (realistic values, every field of the "
        "catalogue; OpenIM's documented example where it gives one) as JSON on stdout.",
        epilog=raw("Example: scriptgate sample callbackBeforeInviteJoinGroupCommand | "
                   "curl -s --data-binary @- localhost:10006/callbackExample/callbackBeforeInviteJoinGroupCommand"),
    )


def _register_replay(group: click.Group) -> None:
    _command(
        group, "replay", cmd_replay,
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
        short_help="replay recorded callbacks through a script and report changed verdicts",
        help="Run SCRIPT offline against recorded callbacks (NDJSON from `scriptgate export` or "
        "GET /admin/recordings/{command}) and report, per record and in total, how each reply would change.",
        epilog=raw(REPLAY_EPILOG),
    )


def _register_check_and_push(group: click.Group) -> None:
    _command(
        group, "check", cmd_check,
        click.argument("target", metavar="FILE|DIR"),
        click.option("--command", help="callbackCommand for a FILE not named <callbackCommand>.py"),
        click.option("--strict", is_flag=True, help="fail on warnings too"),
        click.option("--json", is_flag=True, help="print one JSON document"),
        click.option("--openim", type=click.Choice(OPENIM_LINES), default="main", help=OPENIM_HELP),
        short_help="validate scripts offline",
        help="Validate FILE or every DIR/<callbackCommand>.py offline: policy errors with line/col; "
        "errors for literal results OpenIM cannot use (fields the command cannot change, wrong JSON types, "
        "nil-pointer traps, unusable deny() codes: the server refuses such uploads); warnings for known OpenIM "
        "surprises and for commands the --openim line never sends (docs/openim.md).",
        epilog=raw(CHECK_EPILOG),
    )
    _command(
        group, "push", cmd_push,
        click.argument("target", metavar="FILE|DIR"),
        click.option("--command", help="callbackCommand for a FILE not named <callbackCommand>.py"),
        click.option("--dry-run", is_flag=True, help="check and compare with the server, upload nothing"),
        click.option("--draft", is_flag=True, help="store as drafts (?activate=false) instead of going live"),
        click.option("--strict", is_flag=True, help="treat warnings as errors"),
        click.option("--openim", type=click.Choice(OPENIM_LINES), default="main", help=OPENIM_HELP),
        connection_options,
        short_help="upload scripts to a running server",
        help="Check FILE or every DIR/<callbackCommand>.py offline, then upload each one whose sha256 "
        "differs from the live version (one step for CI). Nothing is uploaded if any script has errors.",
        epilog="Exit status: 0 done (or nothing to do), 1 a script was refused (offline or by the server), "
        "2 the server could not be reached, the token was refused, or bad arguments.",
    )


def _register_export_and_snapshot(group: click.Group) -> None:
    _command(
        group, "export", cmd_export,
        click.argument("commands", nargs=-1, metavar="[COMMAND]..."),
        click.option("-o", "--output", metavar="FILE", help="output file (default: stdout)"),
        click.option("--limit", type=int, default=10_000, help="records per command (default 10000, max 100000)"),
        click.option("--since", metavar="WHEN", help="unix timestamp, or a duration back from now (15m, 2h, 7d)"),
        connection_options,
        short_help="download recorded callbacks as NDJSON",
        help="Write recorded callbacks from a running server (GET /admin/recordings/{command}) "
        "as NDJSON, oldest first per command, ready for `scriptgate replay`.",
    )
    _command(
        group, "kv-snapshot", cmd_kv_snapshot,
        click.option("-o", "--output", metavar="FILE", help="output file (default: stdout)"),
        click.option("--namespace", default="default", help="KV namespace (default: default)"),
        click.option("--prefix", default="", help="only keys starting with this"),
        connection_options,
        short_help="save a namespace of the KV store as a JSON snapshot",
        help="Save the keys of one KV namespace from a running server as "
        '{"namespace", "keys": [{key, type, value, ttl}]}, for `run`/`replay --kv`.',
    )


def register(group: click.Group) -> None:
    """Add the offline and client commands to ``group``, in the order ``--help`` lists them."""
    _register_run_and_sample(group)
    _register_replay(group)
    _register_check_and_push(group)
    _register_export_and_snapshot(group)
