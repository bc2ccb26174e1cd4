"""JSON server log lines (server/logfmt.py)."""

from __future__ import annotations

import logging

import orjson
import pytest

from server import logfmt
from server.config import ConfigError, build


def line(msg: str, *args: object, **kw: object) -> dict[str, object]:
    record = logging.getLogger("scriptgate.test").makeRecord("scriptgate.test", logging.WARNING, __file__, 1, msg,
                                                             args, None, extra=kw.get("extra"))  # type: ignore[arg-type]
    return orjson.loads(logfmt.JSONFormatter().format(record))


def test_callback_lines_carry_the_operation_id_as_a_field() -> None:
    out = line("script error in %s", "cmd", extra=logfmt.callback_fields("cmd", "op-9", 4))
    assert out["operationID"] == "op-9" and out["command"] == "cmd" and out["version"] == 4
    assert out["message"] == "script error in cmd" and out["level"] == "warning" and str(out["ts"]).endswith("Z")
    plain = line("no callback here")
    assert "operationID" not in plain


def test_the_environment_overrides_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCRIPTGATE_LOG_FORMAT", raising=False)
    assert logfmt.chosen("text") == "text"
    monkeypatch.setenv("SCRIPTGATE_LOG_FORMAT", "json")
    assert logfmt.chosen("text") == "json"


def test_config_keys_are_checked() -> None:
    assert build({"log_format": "json", "logs": {"max_records": 5}}).logs.max_records == 5
    for bad in ({"log_format": "xml"}, {"logs": {"max_records": 0}}, {"logs": {"nope": 1}},
                {"logs": {"max_record_bytes": 10}}, {"logs": {"keepalive_s": 0}}, {"logs": 3}):
        with pytest.raises(ConfigError):
            build(bad)
