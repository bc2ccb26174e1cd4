"""Every request on the callback path gets HTTP 200 with the five common fields and an
``error`` object, including the ones the HTTP parser refuses (server/http/h1.py), over
raw sockets so that nothing is normalised on the way."""

from __future__ import annotations

import socket

import orjson
import pytest

from tests.server_proc import start_server

INVITE = "callbackBeforeInviteJoinGroupCommand"
FIVE = {"actionCode", "errCode", "errMsg", "errDlt", "nextCode"}
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("badinput") / "c.toml"
    cfg.write_text(f"body_timeout_s = {BODY_TIMEOUT_S}\n[commands.callbackBeforeAddFriendCommand]\n"
                   'failure_policy = "closed"\n')
    srv = start_server("--workers", "1", "--config", str(cfg))
    yield srv
    srv.stop()


def exchange(port: int, raw: bytes, timeout: float = 10, half_close: bool = False) -> bytes:
    """Send ``raw``, read until the server closes (or ``timeout``); the bytes received."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
            if _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def parse(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    status = int(head.split(b" ")[1])
    return status, orjson.loads(body)


def assert_five_field_error(data: bytes, code: str | None = None) -> dict:
    status, body = parse(data)
    assert status == 200, data[:300]
    assert FIVE <= body.keys(), body
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    assert b"Traceback" not in data
    return body


def post(path: str, body: bytes, headers: str = "", method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n").encode() + body


# Cases that reach our handler (server/http/callback.py).
HANDLER_CASES = [
    ("bad JSON", post(f"/{INVITE}", b"{nope"), "invalid_json"),
    ("empty body", post(f"/{INVITE}", b""), "invalid_json"),
    ("not an object", post(f"/{INVITE}", b"[1]"), "invalid_body"),
    ("bad UTF-8", post(f"/{INVITE}", b'{"reason": "\xff"}'), "invalid_utf8"),
    ("bad field", post(f"/{INVITE}", b'{"groupID": 5}'), "invalid_field"),
    ("unknown command", post("/callbackNoSuchCommand", b"{}"), "unknown_command"),
    ("root path", post("/", b"{}"), "unknown_command"),
    ("GET", post(f"/{INVITE}", b"", method="GET"), "method_not_allowed"),
    ("PUT", post(f"/{INVITE}", b"{}", method="PUT"), "method_not_allowed"),
    ("OPTIONS", post(f"/{INVITE}", b"", method="OPTIONS"), "method_not_allowed"),
    ("TRACE", post(f"/{INVITE}", b"", method="TRACE"), "method_not_allowed"),
    # llhttp knows the registered methods only: the parser refuses the request line.
    ("made-up method", post(f"/{INVITE}", b"", method="FROB"), "bad_http"),
    ("text/plain", post(f"/{INVITE}", b"hello", headers="X-Content-Type: text/plain\r\n"), "invalid_json"),
    ("too large (declared)", post(f"/{INVITE}", b"{}").replace(b"Content-Length: 2", b"Content-Length: 99999999")
     + b"x" * 10, "payload_too_large"),
    ("bad Content-Length header on a callback", b"POST /" + INVITE.encode()
     + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}", None),
]


@pytest.mark.parametrize("raw,code", [c[1:] for c in HANDLER_CASES], ids=[c[0] for c in HANDLER_CASES])
def test_handler_level_bad_input_is_a_five_field_200(server, raw, code):
    assert_five_field_error(exchange(server.port, raw), code)


def test_too_large_streamed_body(server):
    big = b'{"reason":"' + b"a" * (2 * 1024 * 1024) + b'"}'
    assert_five_field_error(exchange(server.port, post(f"/{INVITE}", big)), "payload_too_large")


def chunked(path: str, chunks: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{extra}\r\n").encode() + chunks


# Cases the HTTP parser (llhttp) refuses before any handler runs (server/http/h1.py).
PARSER_CASES = [
    ("garbage request line", b"\x01\x02 hello there\r\n\r\n", "bad_http"),
    ("request line without version", b"POST /x\r\nHost: x\r\n\r\n", "bad_http"),
    ("malformed chunk size", chunked(f"/{INVITE}", b"zz\r\n{}\r\n0\r\n\r\n"), "bad_http"),
    ("chunk not terminated", chunked(f"/{INVITE}", b"2\r\n{}XX0\r\n\r\n"), "bad_http"),
    ("Content-Length plus chunked", chunked(f"/{INVITE}", b"2\r\n{}\r\n0\r\n\r\n", "Content-Length: 2\r\n"),
     "bad_http"),
    ("unknown transfer encoding", f"POST /{INVITE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".encode(),
     "bad_http"),
    ("control byte in a header", f"POST /{INVITE} HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\n{{}}"
     .encode(), "bad_http"),
    ("header without colon", f"POST /{INVITE} HTTP/1.1\r\nHost: x\r\nnocolon\r\nContent-Length: 2\r\n\r\n{{}}"
     .encode(), "bad_http"),
    # Answered by the handler (an unreadable Content-Length) before Tornado would refuse it.
    ("two Content-Lengths", f"POST /{INVITE} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
     .encode(), None),
    ("path over 64 KB", f"POST /{'a' * 70_000}/{INVITE} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}"
     .encode(), "headers_too_large"),
    ("header over 64 KB", f"POST /{INVITE} HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 70_000}\r\nContent-Length: 2\r\n\r\n{{}}"
     .encode(), "headers_too_large"),
]


@pytest.mark.parametrize("raw,code", [c[1:] for c in PARSER_CASES], ids=[c[0] for c in PARSER_CASES])
def test_parser_level_bad_input_is_a_five_field_200(server, raw, code):
    assert_five_field_error(exchange(server.port, raw), code)
    assert server.callback(INVITE, {"groupID": "g"}).status == 200  # and the server carries on


def test_parser_refusal_uses_the_commands_failure_policy(server):
    raw = chunked("/callbackBeforeAddFriendCommand", b"zz\r\n")
    body = assert_five_field_error(exchange(server.port, raw), "bad_http")
    assert body["nextCode"] == 1 and body["errCode"] != 0  # closed policy: a rejection


def test_parser_refusal_in_the_request_line_or_headers_uses_the_commands_failure_policy(server):
    for raw in (post("/callbackBeforeAddFriendCommand", b"{}", method="FROB"),
                b"POST /callbackBeforeAddFriendCommand HTTP/1.1\r\nHost: x\r\nContent-Length: 2x\r\n\r\n{}"):
        body = assert_five_field_error(exchange(server.port, raw), "bad_http")
        assert body["nextCode"] == 1 and body["errCode"] != 0, raw  # closed policy: a rejection


def test_parser_refusal_on_an_admin_path_is_a_plain_400(server):
    status, body = parse(exchange(server.port, chunked("/admin/scripts", b"zz\r\n")))
    assert status == 400 and body["error"] == "bad_http" and body["message"]


def test_body_that_never_completes_is_cut_with_a_reply(server):
    raw = f"POST /{INVITE} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"groupID\"".encode()
    # Keep our side open: the server must answer by itself after body_timeout_s.
    data = exchange(server.port, raw, timeout=BODY_TIMEOUT_S + 20)
    assert_five_field_error(data, "body_timeout")


def test_chunked_body_that_never_completes_is_cut_with_a_reply(server):
    raw = chunked(f"/{INVITE}", b"2\r\n{}\r\n")
    data = exchange(server.port, raw, timeout=BODY_TIMEOUT_S + 20)
    assert_five_field_error(data, "body_timeout")


def test_keep_alive_after_an_error_reply(server):
    """A handler-level error answer keeps the connection usable for the next callback."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post(f"/{INVITE}", b"{nope"))
        first = b""
        while not _complete(first):
            first += sock.recv(65536)
        assert_five_field_error(first, "invalid_json")
        sock.sendall(post(f"/{INVITE}", b'{"groupID": "g"}'))
        second = b""
        while not _complete(second):
            second += sock.recv(65536)
        status, body = parse(second)
        assert status == 200 and "error" not in body
