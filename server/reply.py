"""Encoding of the replies OpenIM reads: always a JSON object with the five common fields.

OpenIM decodes the body into ``{actionCode, errCode, errMsg, errDlt, nextCode int32/string}``
and rejects the user's action only when ``actionCode == 0 && nextCode == 1``. Anything
that is not valid JSON, or a string where an int32 belongs, fails the action with 90007,
so every byte sent here is built from checked values.
"""

from __future__ import annotations

from typing import Any

import orjson

# The five fields every reply carries (a script cannot set them as fields: server/catalog.py).
COMMON_REPLY_FIELDS = ("actionCode", "errCode", "errMsg", "errDlt", "nextCode")
_COMMON_KEYS = frozenset(COMMON_REPLY_FIELDS)
ACK = b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'


def common(*, reject: bool = False, code: int = 0, msg: str = "", dlt: str = "") -> dict[str, Any]:
    return {
        "actionCode": 0,
        "errCode": code,
        "errMsg": msg,
        "errDlt": dlt,
        "nextCode": 1 if reject else 0,
    }


def continue_with(fields: dict[str, Any] | None = None) -> dict[str, Any]:
    body = common()
    if fields:
        body.update(fields)
    return body


def reject(code: int, msg: str, dlt: str) -> dict[str, Any]:
    return common(reject=True, code=code, msg=msg, dlt=dlt)


def encode(body: dict[str, Any]) -> bytes:
    if body.keys() == _COMMON_KEYS and not body["errCode"]:
        if not body["nextCode"] and not body["errMsg"] and not body["errDlt"]:
            return ACK
    return orjson.dumps(body)


def error_body(code: str, message: str, base: dict[str, Any] | None = None) -> bytes:
    """A JSON error for the callback endpoint.

    It still carries the five common fields (``base``: the failure-policy reply for the
    command, or a plain continue) so that OpenIM, which ignores the HTTP status, reads
    a well-formed reply instead of failing the user's action with a DataError.
    """
    body = dict(base) if base is not None else common()
    body["error"] = {"code": code, "message": message}
    return orjson.dumps(body)
