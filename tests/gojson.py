"""Encode request bodies exactly as OpenIM's Go server does (encoding/json's Encoder):
compact, HTML characters escaped as \\u003c \\u003e \\u0026, U+2028/U+2029 escaped,
non-ASCII kept as UTF-8, nil slices as null, and a trailing newline."""

from __future__ import annotations

import json
from typing import Any

GO_HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "User-Agent": "Go-http-client/1.1",
    "Accept-Encoding": "gzip",
}


def go_encode(obj: Any) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    text = (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return text.encode("utf-8") + b"\n"


def go_headers(operation_id: str = "op-1") -> dict[str, str]:
    # Go canonicalises the "operationID" header key to "Operationid" on the wire.
    return {**GO_HEADERS, "Operationid": operation_id}
