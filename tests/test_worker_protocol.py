"""Framing (sandbox.protocol), the worker's warm-up, and exit classification."""

from __future__ import annotations

import signal
import socket

import orjson
import pytest

from sandbox import protocol
from sandbox.host.pool import describe_exit
from sandbox.protocol import FrameDecoder, ProtocolError


def test_round_trip_with_raw_body() -> None:
    payload = b'{"groupID":"1","x":"\\u003c"}\n'  # as Go sends it: escapes and a newline
    frame = protocol.encode({"t": "run", "id": 1}, payload)
    [(msg, body)] = FrameDecoder().feed(frame)
    assert msg == {"t": "run", "id": 1} and body == payload


def test_partial_and_coalesced_frames() -> None:
    frames = b"".join(protocol.encode({"t": "kv", "id": i, "args": ["k" * i]}) for i in range(50))
    dec = FrameDecoder()
    got = []
    for i in range(len(frames)):  # one byte at a time
        got += dec.feed(frames[i : i + 1])
    assert [m["id"] for m, _ in got] == list(range(50))
    assert dec.buffered == 0
    # All at once, plus a trailing partial frame kept for later.
    dec = FrameDecoder()
    got = dec.feed(frames + frames[:5])
    assert len(got) == 50 and dec.buffered == 5


def test_oversize_refused_from_the_length_prefix() -> None:
    dec = FrameDecoder(limit=1024)
    with pytest.raises(ProtocolError):
        dec.feed(protocol.HEADER.pack(10, 2000))  # nothing of the body has arrived yet


@pytest.mark.parametrize(
    "head",
    [b"not json", b"[1, 2]", b'{"no_type": 1}', b'{"t": 5}', b"\xff\xfe"],
)
def test_malformed_headers(head: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(protocol.encode_raw(head))


def test_empty_header_refused() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(protocol.HEADER.pack(0, 0))


def test_sets_encode_as_sorted_lists_and_other_objects_refuse() -> None:
    [(msg, _)] = FrameDecoder().feed(protocol.encode({"t": "kvr", "ok": {"b", "a"}}))
    assert msg["ok"] == ["a", "b"]
    with pytest.raises(TypeError):
        protocol.encode({"t": "kvr", "ok": object()})


def test_blocking_channel() -> None:
    a, b = socket.socketpair()
    with a, b:
        left, right = protocol.BlockingChannel(a), protocol.BlockingChannel(b, limit=64)
        left.send({"t": "x", "n": 1}, b"body")
        assert right.recv() == ({"t": "x", "n": 1}, b"body")
        left.send({"t": "x", "big": "y" * 100})
        with pytest.raises(ProtocolError):
            right.recv()


def test_blocking_channel_eof() -> None:
    a, b = socket.socketpair()
    chan = protocol.BlockingChannel(b)
    a.close()
    assert chan.recv() is None
    b.close()


def test_warm_up_covers_its_scripts() -> None:
    # The worker can import nothing after confinement, so the warm-up must run for real:
    # every warm-up script compiles under the current policy and none is blocked.
    from sandbox.worker import main as worker

    assert worker.warm_up() == []


def test_exit_classification() -> None:
    assert "cpu time" in describe_exit(-signal.SIGXCPU, 512)
    assert "memory" in describe_exit(-signal.SIGKILL, 512)
    assert "memory" in describe_exit(71, 512)
    assert "SIGSEGV" in describe_exit(-signal.SIGSEGV, 512)
    assert "status 3" in describe_exit(3, 512)


def test_result_frame_is_plain_json() -> None:
    from sandbox.api import RunResult

    frame = protocol.encode({"t": "done", "id": 1, "r": RunResult.failed("budget", "x" * 10_000).to_wire()})
    msg, _ = FrameDecoder().feed(frame)[0]
    assert len(msg["r"]["error"]["message"]) <= 512
    assert orjson.loads(orjson.dumps(msg)) == msg


def test_big_frame_in_small_reads_through_a_reused_buffer() -> None:
    frame = protocol.encode({"t": "done", "blob": "z" * 3_000_000})
    dec = FrameDecoder()
    shared = bytearray(65536)  # like the host's BufferedProtocol buffer
    got = []
    for i in range(0, len(frame), 65536):
        chunk = frame[i : i + 65536]
        shared[: len(chunk)] = chunk
        got += dec.feed(memoryview(shared)[: len(chunk)])
    assert len(got) == 1 and len(got[0][0]["blob"]) == 3_000_000
