"""Server log lines as text (the default) or JSON (``log_format = "json"``).

A JSON line is one object: ``{"ts", "level", "logger", "message"}`` plus, on every line
about a callback, ``"operationID"``, ``"command"`` and ``"version"`` (passed by the logging
call as ``extra=callback_fields(...)``), and ``"exc"`` with the traceback when there is one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import orjson

from server.isotime import iso_utc

CALLBACK_FIELDS = ("operationID", "command", "version")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def callback_fields(command: str, operation_id: str, version: int | None = None) -> dict[str, Any]:
    """``extra=`` for a log call about one callback."""
    return {"operationID": operation_id or "", "command": command, "version": version}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CALLBACK_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def chosen(configured: str) -> str:
    """The format: ``SCRIPTGATE_LOG_FORMAT`` if set, else the config's ``log_format``."""
    return os.environ.get("SCRIPTGATE_LOG_FORMAT") or configured


def apply(fmt: str) -> None:
    """Give the root logger's handlers (or a new stderr handler) the chosen format."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    formatter = JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
