"""What the offline commands print: findings as FILE:LINE:COL lines, the outcome of one run,
the replay report's notes, JSON documents, and files written whole or not at all."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any

import orjson

from server.offline.files import ScriptFile
from server.service.callbacks import Outcome


def print_json(doc: Any) -> None:
    """One indented JSON document on stdout (every --json output)."""
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_issues(item: ScriptFile) -> None:
    for kind, issues in (("error", item.errors), ("warning", item.warnings)):
        for i in issues:
            print(f"{item.path}:{i['line']}:{i['col']}: {kind}: {i['message']}")


def print_compile_errors(script: str, details: list[dict[str, Any]]) -> None:
    """A refused script's findings (InvalidScript details), one FILE:LINE:COL line each."""
    for d in details:
        print(f"{script}:{d['line']}:{d['col']}: error: {d['message']}", file=sys.stderr)


def print_check(items: list[ScriptFile], as_json: bool, failed: bool) -> None:
    """``scriptgate check``'s output: one JSON document, or the findings and a count line."""
    errors = sum(len(i.errors) for i in items)
    warnings = sum(len(i.warnings) for i in items)
    if as_json:
        print_json({
            "files": [
                {"path": str(i.path), "command": i.command, "errors": i.errors, "warnings": i.warnings} for i in items
            ],
            "errors": errors,
            "warnings": warnings,
            "ok": not failed,
        })
        return
    for item in items:
        print_issues(item)
    ok = sum(1 for i in items if not i.errors)
    print(f"checked {len(items)} script(s): {ok} ok, {errors} error(s), {warnings} warning(s)")


def print_run(name: str, outcome: Outcome, as_json: bool) -> None:
    """``scriptgate run``'s output: the reply on stdout, logs, error and verdict on stderr
    (or everything as one JSON document)."""
    error = outcome.error.to_wire() if outcome.error else None
    if as_json:
        print_json({
            "command": name,
            "verdict": outcome.verdict,
            "reply": outcome.reply,
            "error": error,
            "logs": outcome.logs,
            "kv_ops": outcome.kv_ops,
            "elapsed_ms": outcome.elapsed_ms,
        })
        return
    for line in outcome.logs:
        print(f"log: {line}", file=sys.stderr)
    if error:
        print(f"script error ({error['kind']}): {error['message']}", file=sys.stderr)
    print(f"verdict: {outcome.verdict}  ({outcome.elapsed_ms:.1f} ms, {outcome.kv_ops} kv ops)", file=sys.stderr)
    sys.stdout.write(orjson.dumps(outcome.reply).decode() + "\n")


def print_line_errors(name: str, line_errors: list[Any], shown: int) -> None:
    """Corrupt or unusable recording lines as FILE:LINE: reason, the first ``shown`` of them."""
    for e in line_errors[:shown]:
        print(f"{name}:{e.line}: {e.message}", file=sys.stderr)
    if len(line_errors) > shown:
        print(f"{name}: ... and {len(line_errors) - shown} more bad lines", file=sys.stderr)


def replay_notes(summary: Any, command_name: str, how: str, redacted_marker: str) -> list[str]:
    """What a replay's reader should know beyond the table: skipped and redacted records."""
    notes = []
    if summary.skipped:
        notes.append(
            f"note: {sum(summary.skipped.values())} records of other commands were skipped "
            f"(the script is for {command_name}, from the {how})"
        )
    if summary.redacted:
        notes.append(
            f"note: {summary.redacted} records had redacted fields; the script saw {redacted_marker!r} in their place"
        )
    return notes


class Output:
    """stdout, or a file written next to its final name and renamed at the end, so an
    interrupted export never leaves a truncated file that looks complete."""

    def __init__(self, path: str | None) -> None:
        self.path = None if path in (None, "-") else Path(path)
        self.fh: IO[bytes]
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
