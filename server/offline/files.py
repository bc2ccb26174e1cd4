"""Script and input files as the offline commands read them: decoded the way the server
decodes an upload, each script with the command it is for and, after ``check_scripts``,
the errors an upload would refuse and the lint warnings."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from server.catalog import Catalog
from server.offline.env import OfflineError
from server.service.scripts import script_sha


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


def _script_paths(target: str, command: str | None) -> list[Path]:
    path = Path(target)
    if path.is_dir():
        if command:
            raise OfflineError("--command applies to a single FILE, not a directory of <callbackCommand>.py files")
        files = sorted(p for p in path.iterdir() if p.suffix == ".py" and p.is_file() and not p.name.startswith("_"))
        if not files:
            raise OfflineError(f"{target}: no .py files")
        return files
    if path.is_file():
        return [path]
    raise OfflineError(f"{target}: no such file or directory")


def collect_scripts(target: str, command: str | None, cat: Catalog) -> list[ScriptFile]:
    """``FILE`` or every ``*.py`` in ``DIR`` (not recursive), each with its command."""
    files = _script_paths(target, command)
    if command and command not in cat:
        raise OfflineError(f"unknown callbackCommand {command!r}")
    out = []
    for f in files:
        item = ScriptFile(f, command or (f.stem if f.stem in cat else None))
        try:
            item.source = read_source(f)
            item.sha256 = script_sha(item.source)
        except OfflineError as exc:
            item.problem = str(exc).removeprefix(f"{f}: ")
        out.append(item)
    return out


def check_scripts(items: list[ScriptFile], cat: Catalog, openim: str = "main") -> None:
    """Fill ``errors`` (policy and lint errors, with line/col) and ``warnings`` (lint) of
    every script, for the OpenIM line ``openim``: what an upload would refuse or warn about."""
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


def load_script(path: str) -> tuple[str, str]:
    """The source of SCRIPT and its file name's stem (the command it may be named after)."""
    p = Path(path)
    if not p.is_file():
        raise OfflineError(f"{path}: no such file")
    return read_source(p), p.stem


def read_input(path: str) -> bytes:
    """A file's bytes, or stdin's for ``-``."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OfflineError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_payload(path: str) -> dict[str, Any]:
    """A callback request from ``path`` (``-``: stdin); a recording line gives its request."""
    try:
        payload = orjson.loads(read_input(path))
    except orjson.JSONDecodeError as exc:
        raise OfflineError(f"{path}: not valid JSON ({str(exc)[:120]})") from None
    if type(payload) is not dict:
        raise OfflineError(f"{path}: the payload must be a JSON object (a callback request)")
    if type(payload.get("request")) is dict:  # a recording line: run its request
        payload = payload["request"]
    return payload
