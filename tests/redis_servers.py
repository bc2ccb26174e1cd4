"""Real Redis servers for tests: standalone, a 3-master cluster, and a Sentinel setup.

Each server is a ``redis-server`` child process on a free 127.0.0.1 port with its own
temporary directory (no persistence, no shared state), stopped and removed on teardown.
Readiness is detected by polling (PING, ``cluster_state:ok``, Sentinel's view of the
replica), never by sleeping a fixed time. Nothing here imports the project's code.

Used through the pytest fixtures in ``tests/conftest_redis.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.ports import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_SENTINEL = shutil.which("redis-sentinel") or REDIS_SERVER
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def redis_available() -> bool:
    return os.path.exists(REDIS_SERVER) and os.access(REDIS_SERVER, os.X_OK)


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}" + (f" (last error: {last!r})" if last else ""))


@dataclass
class RedisProcess:
    """One redis-server (or sentinel) process. ``start`` can be called again after ``kill``."""

    workdir: Path
    port: int
    args: list[str] = field(default_factory=list)
    sentinel: bool = False
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def unix_path(self) -> str:
        return str(self.workdir / "redis.sock")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5,
            decode_responses=True, protocol=2, **kw,  # type: ignore[arg-type]
        )

    def start(self, wait: bool = True) -> RedisProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.sentinel:
            cmd = [REDIS_SENTINEL, str(self.workdir / "sentinel.conf")]
        else:
            cmd = [
                REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--save", "", "--appendonly", "no",
                "--unixsocket", self.unix_path, "--unixsocketperm", "700",
                "--enable-debug-command", "yes", "--protected-mode", "no",
                "--loglevel", "warning", "--logfile", str(self.workdir / "redis.log"),
            ]
            if self.password:
                cmd += ["--requirepass", self.password, "--masterauth", self.password]
            cmd += self.args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        def ping() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis on port {self.port} exited with {self.proc.returncode}")
            with self.client(socket_connect_timeout=0.2) as c:
                return bool(c.ping())

        wait_until(ping, timeout, f"redis on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: the crash case (no goodbye to clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: a host that stops answering without closing connections."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class _Base:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="sg-redis-"))
        self.processes: list[RedisProcess] = []

    def _new(self, name: str, **kw: object) -> RedisProcess:
        proc = RedisProcess(self.root / name, free_port(), **kw)  # type: ignore[arg-type]
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.processes:
            with contextlib.suppress(Exception):
                proc.resume()
                proc.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Standalone(_Base):
    """One redis-server. ``url`` (TCP) and ``unix_url`` (unix socket)."""

    def __init__(self, root: Path | None = None, password: str | None = None, args: list[str] | None = None):
        super().__init__(root)
        self.server = self._new("standalone", password=password, args=list(args or []))
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def unix_url(self) -> str:
        auth = f":{self.server.password}@" if self.server.password else ""
        return f"unix://{auth}{self.server.unix_path}"

    @property
    def port(self) -> int:
        return self.server.port

    def client(self, **kw: object) -> redis.Redis:
        return self.server.client(**kw)


class Cluster(_Base):
    """Three masters, no replicas; ``url`` is a ``redis+cluster://`` URL naming all three."""

    def __init__(self, root: Path | None = None, masters: int = 3):
        super().__init__(root)
        self.nodes = []
        self.bus_ports: dict[int, int] = {}
        for i in range(masters):
            bus = free_port()
            node = self._new(f"node{i}", args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--cluster-port", str(bus),
            ])
            self.nodes.append(node)
            self.bus_ports[node.port] = bus
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        self._create()

    def _create(self) -> None:
        # Split the 16384 slots evenly, then introduce the nodes to each other.
        per = 16384 // len(self.nodes)
        for i, node in enumerate(self.nodes):
            last = 16383 if i == len(self.nodes) - 1 else (i + 1) * per - 1
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        with self.nodes[0].client() as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, self.bus_ports[node.port])

        def converged() -> bool:
            for node in self.nodes:
                with node.client() as c:
                    info = c.execute_command("CLUSTER", "INFO")
                    if "cluster_state:ok" not in info or f"cluster_known_nodes:{len(self.nodes)}" not in info:
                        return False
                    slots = c.execute_command("CLUSTER", "SLOTS")
                    if len(slots) != len(self.nodes):
                        return False
            return True

        wait_until(converged, 30, "cluster_state:ok on every node", interval=0.1)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)


class SentinelSetup(_Base):
    """A master, one replica and one Sentinel watching them as ``service``.

    ``url`` is ``redis+sentinel://127.0.0.1:<sentinel port>/<service>``. ``failover()``
    asks Sentinel to promote the replica and waits until it is the master.
    """

    def __init__(self, root: Path | None = None, service: str = "sgmaster", down_after_ms: int = 1000):
        super().__init__(root)
        self.service = service
        self.master = self._new("master")
        self.master.start()
        self.replica = self._new("replica", args=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.replica.start()
        self.sentinel = self._new("sentinel", sentinel=True)
        conf = self.sentinel.workdir
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "sentinel.conf").write_text(
            f"port {self.sentinel.port}\nbind 127.0.0.1\ndir {conf}\nprotected-mode no\n"
            f"logfile {conf / 'sentinel.log'}\n"
            f"sentinel monitor {service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.sentinel.start()
        self.wait_healthy()

    def sentinel_client(self) -> redis.Redis:
        return self.sentinel.client()

    def master_port(self) -> int:
        with self.sentinel_client() as c:
            _host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            return int(port)

    def current_master(self) -> RedisProcess:
        port = self.master_port()
        return next(p for p in (self.master, self.replica) if p.port == port)

    def current_replica(self) -> RedisProcess:
        port = self.master_port()
        return next(p for p in (self.master, self.replica) if p.port != port)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until Sentinel sees a master and an in-sync replica it could promote."""

        def ready() -> bool:
            with self.sentinel_client() as c:
                replicas = c.execute_command("SENTINEL", "REPLICAS", self.service)
                if not replicas:
                    return False
                info = dict(zip(replicas[0][::2], replicas[0][1::2], strict=False))
                if "s_down" in info.get("flags", "") or info.get("master-link-status") != "ok":
                    return False
            with self.current_replica().client() as c:
                return c.info("replication").get("master_link_status") == "up"

        wait_until(ready, timeout, "sentinel to see an in-sync replica", interval=0.1)

    def failover(self, timeout: float = 30.0) -> int:
        """Promote the replica; return the new master's port once Sentinel reports it."""
        old = self.master_port()
        with self.sentinel_client() as c:
            c.execute_command("SENTINEL", "FAILOVER", self.service)

        def promoted() -> bool:
            if self.master_port() == old:
                return False
            with self.current_master().client() as c:
                return c.info("replication").get("role") == "master"

        wait_until(promoted, timeout, "sentinel failover", interval=0.05)
        return self.master_port()

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}"
