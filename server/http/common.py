"""What the admin handlers share: JSON errors (never HTML, never a stack trace), request
bodies read as a stream with a size limit (413 before the body is buffered); and the
client-network allow-list, which the callback path (server/http/callback.py) applies too."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import orjson
import tornado.web
from tornado import httputil

log = logging.getLogger("scriptgate.http")


class JSONErrorMixin(tornado.web.RequestHandler):
    """Every error this server sends is a JSON object with ``error`` and ``message``."""

    # True once finish() was called: Tornado keeps that in a private attribute.
    answered = False

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Any:
        self.answered = True
        return super().finish(chunk)

    def json_error(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        if self.answered:
            return
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        body = {"error": code, "message": message, **extra}
        self.finish(orjson.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if exc and not isinstance(exc[1], tornado.web.HTTPError):
            log.error("unhandled error on %s %s", self.request.method, self.request.path, exc_info=exc)
        reason = {
            400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
        }.get(status_code, "internal_error" if status_code >= 500 else "error")
        if status_code >= 500:
            message = "internal error (see the server log)"
        else:
            message = reason_phrase(status_code, kwargs.get("reason"), exc[1] if exc else None)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"error": reason, "message": message}))


def reason_phrase(status_code: int, reason: str | None, exc: BaseException | None) -> str:
    """The reason phrase Tornado's send_error sets: the one it was given, the HTTPError's own,
    else the standard one."""
    if reason:
        return reason
    if isinstance(exc, tornado.web.HTTPError) and exc.reason:
        return exc.reason
    return httputil.responses.get(status_code, "Unknown")


class BodyTooLarge(Exception):
    """Raised by ``StreamedBody.body`` when the request body was over the limit."""


class StreamedBody(JSONErrorMixin):
    """Reads the request body in chunks so oversized bodies are never buffered.

    An oversized body is read and discarded (up to ``discard_limit`` more bytes) and then
    answered with 413 and a JSON body: closing the connection while the client is still
    sending would make most clients see a broken pipe instead of the answer.
    """

    body_limit = 1_048_576
    discard_limit = 16 << 20

    def limit_for_request(self) -> int:
        return self.body_limit

    def too_large(self, limit: int) -> None:
        self.json_error(413, "payload_too_large", f"request body is larger than {limit} bytes")

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._limit = self.limit_for_request()
        length = self.request.headers.get("Content-Length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                self.json_error(400, "bad_request", "invalid Content-Length")
                return
            if declared > self._limit + self.discard_limit:
                self.too_large(self._limit)
            elif declared > self._limit:
                self._too_large = True

    def data_received(self, chunk: bytes) -> None:
        if self.answered:
            return
        self._size += len(chunk)
        if self._too_large or self._size > self._limit:
            self._too_large = True
            self._chunks = []
            if self._size > self._limit + self.discard_limit:
                self.too_large(self._limit)
            return
        self._chunks.append(chunk)

    @property
    def body(self) -> bytes:
        if self._too_large:
            raise BodyTooLarge()
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def client_allowed(remote_ip: str | None, networks: list[Any]) -> bool:
    if not networks:
        return True
    if not remote_ip:
        return False
    try:
        address = ipaddress.ip_address(remote_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


class NotFoundHandler(JSONErrorMixin):
    def prepare(self) -> None:
        self.json_error(404, "not_found", f"no such endpoint: {self.request.method} {self.request.path}")
