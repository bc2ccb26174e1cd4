"""rediss:// (TLS) with a password: data connections and the cache's tracking link."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from redis_servers import Standalone, free_port

from server.store.connect import open_store
from tests.timing import FAR_S


def _certs(d: Path) -> None:
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=sg-test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")


def test_tls_with_password(tmp_path: Path, store_prefix: str) -> None:
    from conftest_redis import require_redis

    require_redis()
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    _certs(tmp_path)
    tls_port = free_port()
    server = Standalone(tmp_path / "r", password="pw:with@chars", args=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(tmp_path / "server.pem"),
        "--tls-key-file", str(tmp_path / "server.key"), "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
        "--tls-auth-clients", "no",
    ])
    try:
        url = (f"rediss://:pw%3Awith%40chars@127.0.0.1:{tls_port}"
               f"?ssl_ca_certs={tmp_path / 'ca.pem'}&ssl_cert_reqs=required")

        async def scenario() -> Any:
            a = await open_store(url, prefix=store_prefix)
            b = await open_store(url, prefix=store_prefix)
            try:
                assert a.tracker is not None and await a.tracker.wait_connected(FAR_S), a.describe()
                assert "pw" not in str(a.describe())
                await a.put_version("cbA", "src", "h", True, "u")
                assert (await b.active_table())["cbA"].source == "src"
                assert await a.kv_call("ns", "sismember", ["bl", "x"]) is False
                await b.kv_call("ns", "sadd", ["bl", ["x"]])
                assert await a.kv_call("ns", "sismember", ["bl", "x"]) is True
                trips = a.kv.round_trips
                assert await a.kv_call("ns", "sismember", ["bl", "x"]) is True
                assert a.kv.round_trips == trips  # cached over TLS too
            finally:
                await a.close()
                await b.close()
            bad = await open_store(url.replace("pw%3Awith", "nope"), prefix=store_prefix)
            try:
                assert await bad.ping() is False
            finally:
                await bad.close()

        asyncio.run(scenario())
    finally:
        server.close()
