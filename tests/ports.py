"""Free TCP ports for test servers, without the bind-to-0 race.

Binding to port 0 and releasing it hands out a port from the kernel's ephemeral range,
which the next outgoing connection (any test, any xdist worker) may take before our
server binds it. Ports here come from below the ephemeral range instead, from a slice of
its own for each xdist worker, each checked free by binding it once, and never handed
out twice by one process."""

from __future__ import annotations

import itertools
import os
import random
import socket

_FIRST, _SLICE, _SLICES = 20_000, 2_000, 6  # 20000-31999: below Linux's default 32768-60999


def _worker_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    start = _FIRST + (index % _SLICES) * _SLICE
    return range(start, start + _SLICE)


_SLICE_PORTS = _worker_slice()
_NEXT = itertools.count(random.randrange(_SLICE))


def free_port() -> int:
    for _ in range(_SLICE):
        port = _SLICE_PORTS[next(_NEXT) % _SLICE]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (or lingering): the next one
            return port
    raise RuntimeError(f"no free port in {_SLICE_PORTS}")
