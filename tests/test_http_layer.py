"""The HTTP/1.1 layer under the delegate (server/http/h1.py, accepted by server/http/conn.py), driven over real sockets with
a small delegate: flow control towards a delegate that is not ready, pipelining order,
answers given before the body was read, limits and timeouts, xheaders, chunked answers.

What the callback path answers byte for byte is pinned in tests/test_callback_bytes.py and
the refusals of malformed requests in tests/test_bad_input.py; this file covers the
layer's own rules, which those reach only through the full server.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado import httputil

from server.http.conn import Server

OK = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")


class Exchange(httputil.HTTPMessageDelegate):
    def __init__(self, app: App, conn: Any) -> None:
        self.app = app
        self.conn = conn
        self.chunks: list[bytes] = []
        self.start_line: Any = None
        self.headers: Any = None

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        self.start_line, self.headers = start_line, headers
        self.app.events.append(("headers", start_line.path))
        return self.app.on_headers(self)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self.chunks.append(chunk)
        return self.app.on_chunk(self, chunk)

    def finish(self) -> None:
        self.app.events.append(("finish", self.start_line.path))
        self.app.on_finish(self)

    def on_connection_close(self) -> None:
        self.app.events.append(("closed", self.start_line.path if self.start_line else None))

    def answer(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        h = httputil.HTTPHeaders({"Content-Length": str(len(body)), **(headers or {})})
        self.conn.write_headers(OK, h, body)
        self.conn.finish()


class App(httputil.HTTPServerConnectionDelegate):
    """Answers ``finish`` with the path and body unless a hook says otherwise."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.on_headers: Callable[[Exchange], Awaitable[None] | None] = lambda ex: None
        self.on_chunk: Callable[[Exchange, bytes], Awaitable[None] | None] = lambda ex, chunk: None
        self.on_finish: Callable[[Exchange], None] = self.echo

    def echo(self, ex: Exchange) -> None:
        ex.answer(ex.start_line.path.encode() + b":" + b"".join(ex.chunks))

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return Exchange(self, request_conn)


def rejection(start_line: Any, code: str, message: str) -> bytes:
    body = f"{code}|{start_line.path if start_line else '-'}".encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)


def serve(test: Callable[[Server, App, int], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        app = App()
        server = Server(app, reject=rejection, **kw)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        server.add_sockets([sock])
        try:
            await test(server, app, sock.getsockname()[1])
        finally:
            server.stop()
            await server.close_all_connections()

    asyncio.run(main())


async def talk(port: int, data: bytes, until_close: bool = True, timeout: float = 10) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if until_close:
            return await asyncio.wait_for(reader.read(-1), timeout)
        return await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def bodies(raw: bytes) -> list[bytes]:
    """The bodies of the Content-Length answers in ``raw``, in order."""
    out, at = [], 0
    while at < len(raw):
        end = raw.index(b"\r\n\r\n", at)
        head = raw[at:end].split(b"\r\n")
        length = int(next(line.split(b":")[1] for line in head if line.lower().startswith(b"content-length")))
        out.append(raw[end + 4 : end + 4 + length])
        at = end + 4 + length
    return out


def test_pipelined_requests_are_answered_in_order_when_the_first_answer_comes_later() -> None:
    async def test(server: Server, app: App, port: int) -> None:
        def finish(ex: Exchange) -> None:
            if ex.start_line.path == "/slow":
                asyncio.get_running_loop().call_later(0.05, app.echo, ex)
            else:
                app.echo(ex)

        app.on_finish = finish
        raw = post("/slow", b"1") + post("/fast", b"2") + post("/last", b"3", "Connection: close\r\n")
        assert bodies(await talk(port, raw)) == [b"/slow:1", b"/fast:2", b"/last:3"]
        # One request at a time: the second was not started before the first was answered.
        assert app.events.index(("headers", "/fast")) > app.events.index(("finish", "/slow"))

    serve(test)


def test_a_delegate_that_is_not_ready_gets_the_body_later_and_in_order() -> None:
    async def test(server: Server, app: App, port: int) -> None:
        ready = asyncio.get_running_loop().create_future()
        app.on_headers = lambda ex: ready  # a streamed upload awaiting its prepare()
        seen: list[int] = []

        def chunk(ex: Exchange, data: bytes) -> None:
            seen.append(len(data))

        app.on_chunk = chunk
        app.on_finish = lambda ex: ex.answer(str(sum(map(len, ex.chunks))).encode())
        body = bytes(range(256)) * 16384  # 4 MB: more than the layer buffers, so reading pauses
        talking = asyncio.ensure_future(talk(port, post("/up", body, "Connection: close\r\n")))
        await asyncio.sleep(0.2)
        assert seen == [] and not talking.done()
        ready.set_result(None)
        assert bodies(await talking) == [str(len(body)).encode()]

    serve(test)


def test_an_answer_before_the_body_is_read_reaches_the_client_then_the_connection_closes() -> None:
    async def test(server: Server, app: App, port: int) -> None:
        def refuse(ex: Exchange) -> None:
            ex.answer(b"refused")

        app.on_headers = refuse
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        for _ in range(40):  # keep sending body: the server must not reset its answer
            writer.write(b"x" * 65536)
        answer = await asyncio.wait_for(reader.read(-1), 10)  # EOF: the server closed
        writer.close()
        assert bodies(answer) == [b"refused"]
        assert ("finish", "/big") not in app.events

    serve(test)


def test_a_head_over_the_limit_in_small_pieces_is_refused() -> None:
    async def test(server: Server, app: App, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\n")
        for _ in range(80):
            writer.write(b"X-Pad: " + b"p" * 1000 + b"\r\n")
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        assert bodies(answer) == [b"headers_too_large|/x"]  # the request line was read: it is passed on

    serve(test, max_header_size=16 * 1024)


@pytest.mark.parametrize("raw", [b"POST /x\r\nHost: x\r\n\r\n", b"POST /x HTTP/2.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n"])
def test_versions_other_than_1_0_and_1_1_are_refused(raw: bytes) -> None:
    async def test(server: Server, app: App, port: int) -> None:
        assert bodies(await talk(port, raw))[0].startswith(b"bad_http|")

    serve(test)


def test_idle_connections_are_closed_without_a_word() -> None:
    async def test(server: Server, app: App, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/a", b"1"))
        assert bodies(await reader.read(65536)) == [b"/a:1"]
        writer.write(b"POST /half HTTP/1.1\r\n")  # headers that never complete: no request
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        writer.close()

    serve(test, idle_connection_timeout=0.2)


def test_a_graceful_stop_answers_with_connection_close() -> None:
    async def test(server: Server, app: App, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/a", b"1"))
        first = await reader.read(65536)
        assert b"Connection: close" not in first
        server.refuse_new_handshakes()
        writer.write(post("/b", b"2"))
        second = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        assert b"\r\nConnection: close\r\n" in second and bodies(second) == [b"/b:2"]

    serve(test)


def test_answers_without_a_length_are_chunked_on_1_1_and_closed_on_1_0() -> None:
    async def test(server: Server, app: App, port: int) -> None:
        def stream(ex: Exchange) -> None:
            ex.conn.write_headers(OK, httputil.HTTPHeaders(), b"ab")
            ex.conn.write(b"cde")
            ex.conn.finish()

        app.on_finish = stream
        got = await talk(port, b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert got.endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")
        got = await talk(port, b"GET /c HTTP/1.0\r\nHost: x\r\n\r\n")
        assert b"chunked" not in got and got.endswith(b"\r\n\r\nabcde")

    serve(test)


def test_forwarded_addresses_apply_to_their_request_only() -> None:
    async def test(server: Server, app: App, port: int) -> None:
        app.on_finish = lambda ex: ex.answer(ex.conn.context.remote_ip.encode())
        raw = post("/a", b"", "X-Forwarded-For: 10.9.8.7, 192.0.2.1\r\n") + post("/b", b"", "Connection: close\r\n")
        # The last address no trusted proxy added; the next request on the connection is direct.
        assert bodies(await talk(port, raw)) == [b"10.9.8.7", b"127.0.0.1"]

    serve(test, xheaders=True, trusted_downstream=["192.0.2.1"])
    serve(lambda s, a, p: _direct(a, p), xheaders=False)


async def _direct(app: App, port: int) -> None:
    app.on_finish = lambda ex: ex.answer(ex.conn.context.remote_ip.encode())
    assert bodies(await talk(port, post("/a", b"", "X-Forwarded-For: 10.9.8.7\r\nConnection: close\r\n"))) == [b"127.0.0.1"]


def test_a_body_that_stops_coming_is_answered_by_the_rejecter_and_the_delegate_told() -> None:
    async def test(server: Server, app: App, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /slowbody HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        answer = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        assert bodies(answer) == [b"body_timeout|/slowbody"]
        assert ("closed", "/slowbody") in app.events

    serve(test, body_timeout=0.2)


def test_a_client_that_pipelines_without_reading_is_not_read_either() -> None:
    """Also: chunk boundaries that split a request's head count only that head's bytes toward
    max_header_size (a pipelined burst of small requests is not refused as one huge head)."""

    async def test(server: Server, app: App, port: int) -> None:
        n = 2500
        app.on_finish = lambda ex: ex.answer(ex.start_line.path.encode() + b":" + b"a" * 8192)
        raw = b"".join(post(f"/r{i}", b"x") for i in range(n))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # ~24 MB of answers will not fit
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(raw)
        conn = None
        for _ in range(500):
            await asyncio.sleep(0.01)
            conn = next(iter(server.connections), None)
            if conn is not None and conn.paused and conn.writes_paused:
                break
        assert conn is not None and conn.paused and conn.writes_paused
        answered = conn.answered
        await asyncio.sleep(0.2)
        assert conn.answered == answered < n  # waiting for the client, not answering ahead
        assert conn.transport.get_write_buffer_size() < 1 << 20
        expected = [f"/r{i}:".encode() + b"a" * 8192 for i in range(n)]
        size = sum(len(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(b)) + len(b) for b in expected)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # now read it all, quickly
        got = await asyncio.wait_for(reader.readexactly(size), 30)
        writer.close()
        answers = bodies(got)
        assert answers == expected

    serve(test)
