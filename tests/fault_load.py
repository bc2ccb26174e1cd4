"""Callback traffic for fault runs (tests/test_nothing_lost.py, bench/bench_faults.py).

Threads send callbacks, each on a new connection, to a list of instances in turn. A
refused connection (nothing was sent) goes to the next instance, as a load balancer does
(nginx ``proxy_next_upstream error``); anything else that is not the expected script
reply (an error status, a reset, a wrong body) is a failed callback.
"""

from __future__ import annotations

import http.client
import threading
import time

import orjson

from tests.gojson import go_encode, go_headers

FRIEND = "callbackBeforeAddFriendCommand"


class Load:
    def __init__(self, ports: list[int], expect: str, command: str = FRIEND, timeout: float = 60.0) -> None:
        self.ports = ports
        self.expect = expect  # the errMsg every reply must carry
        self.command = command
        self.timeout = timeout
        self.ok = 0
        self.failed: list[str] = []
        self.latencies: list[float] = []  # seconds, of the successful callbacks
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def one(self, first: int) -> None:
        body = go_encode({"operationID": "load"})
        for attempt in range(2 * len(self.ports)):
            port = self.ports[(first + attempt) % len(self.ports)]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
            try:
                t0 = time.perf_counter()
                try:
                    conn.connect()
                except ConnectionRefusedError:
                    continue
                conn.request("POST", f"/{self.command}", body=body, headers=go_headers("load"))
                r = conn.getresponse()
                data = r.read()
                took = time.perf_counter() - t0
                reply = orjson.loads(data)
                with self.lock:
                    if r.status == 200 and reply.get("errMsg") == self.expect:
                        self.ok += 1
                        self.latencies.append(took)
                    else:
                        self.failed.append(f"{r.status} {data[:200]!r} port={port} at={time.time():.4f}")
                return
            except Exception as exc:
                with self.lock:
                    self.failed.append(repr(exc) + f" port={port} after_connect={time.perf_counter() - t0:.4f} at={time.time():.4f}")
                return
            finally:
                conn.close()
        with self.lock:
            self.failed.append("every instance refused the connection")

    def run(self, index: int) -> None:
        n = index
        while not self.stop.is_set():
            self.one(n)
            n += 1

    def start(self, threads: int) -> Load:
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(self.timeout)
