"""End to end: a command that keeps exceeding its budgets is boxed (failure policy at once,
visible in /healthz, /metrics and the log) while another command is served normally."""

from __future__ import annotations

import re
from pathlib import Path

from tests.server_proc import start_server

HOG = "callbackBeforeSendSingleMsgCommand"
OTHER = "callbackBeforeAddFriendCommand"
SPIN = "def handle(req):\n    while True:\n        pass\n"
ALLOW = "def handle(req):\n    return allow()\n"
CONFIG = f"""
[penalty_box]
base_s = 600  # boxed for the whole test, however slow the host
max_s = 600

[commands.{HOG}]
failure_policy = "closed"
reject_errcode = 5998
namespace = "hog"
budgets = {{ wall_ms = 200 }}

[commands.{OTHER}]
failure_policy = "closed"
reject_errcode = 5999
namespace = "other"
"""
MSG = {"callbackCommand": HOG, "operationID": "op", "sendID": "a", "recvID": "b", "contentType": 101,
       "content": "{}", "sessionType": 1}
FRIEND = {"callbackCommand": OTHER, "operationID": "op", "fromUserID": "a", "toUserID": "b", "reqMsg": ""}


def test_a_command_that_keeps_exceeding_its_budgets_is_boxed(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG)
    srv = start_server("--config", str(cfg))
    try:
        assert srv.upload(HOG, SPIN).status < 300
        assert srv.upload(OTHER, ALLOW).status < 300
        for _ in range(3):  # three budget errors: boxed
            reply = srv.callback(HOG, MSG).json()
            assert reply["errCode"] == 5998
        health = srv.request("GET", "/healthz", token=False).json()
        boxed = health["fairness"]["penalty_box"]["boxed"]
        assert HOG in boxed and "wall" in boxed[HOG]["reason"]
        calls = health["sandbox"]["calls"]
        reply = srv.callback(HOG, MSG).json()  # refused without running
        assert reply["errCode"] == 5998
        assert srv.request("GET", "/healthz", token=False).json()["sandbox"]["calls"] == calls
        for _ in range(5):
            assert srv.callback(OTHER, FRIEND).json()["errCode"] == 0
        metrics = srv.request("GET", "/metrics").body.decode()
        assert re.search(rf'scriptgate_penalty_box_total\{{command="{HOG}"\}} 1\.0', metrics), metrics
        assert re.search(rf'scriptgate_penalty_box_refused_total\{{command="{HOG}"\}} 1\.0', metrics)
        assert re.search(rf'scriptgate_penalty_boxed\{{command="{HOG}"\}} 1\.0', metrics)
        assert 'scriptgate_host_memory_bytes{what="rss"}' in metrics
        assert any(f"penalty box: {HOG} boxed for 600 s" in line for line in srv.output)
    finally:
        srv.stop()
