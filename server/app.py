"""The Tornado application of one HTTP process: its routes and access log.

The process's state (store, pool, live scripts, dispatcher) and its start/stop order live in
server/service/state.py; the names below are re-exported for the callers that start a
process (server/serve.py, tests)."""

from __future__ import annotations

import logging
from typing import Any

import tornado.web

from server.http.admin import routes as admin_routes
from server.http.common import NotFoundHandler
from server.service.state import AppState

__all__ = ["access_log", "app_paths", "log_request", "make_app"]

access_log = logging.getLogger("scriptgate.access")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log at DEBUG only: a line per callback would cost more than the callback."""
    status = handler.get_status()
    if status >= 500:
        access_log.error("%d %s %.2fms", status, handler.request.path, 1000 * handler.request.request_time())
    elif access_log.isEnabledFor(logging.DEBUG):
        access_log.debug("%d %s %s %.2fms", status, handler.request.method, handler.request.path,
                         1000 * handler.request.request_time())


ADMIN_NOT_FOUND = r"/admin(/.*)?"


def app_paths(state: AppState) -> list[str]:
    """The paths the application answers (every other path is a callback: server/http/callback.py)."""
    return [pattern for pattern, *_ in admin_routes(state)] + [ADMIN_NOT_FOUND]


def make_app(state: AppState) -> tornado.web.Application:
    """The admin API, /healthz and /metrics (callbacks never reach it: server/http/callback.py)."""
    handlers: list[Any] = list(admin_routes(state))
    handlers.append((ADMIN_NOT_FOUND, NotFoundHandler))
    return tornado.web.Application(
        handlers,
        default_handler_class=NotFoundHandler,
        compress_response=False,
        serve_traceback=False,
        xheaders=state.config.trust_proxy,
        log_function=log_request,
    )
