"""Several ScriptGate instances on one real Redis, and Redis faults under traffic.

Each test starts real ``scriptgate serve`` processes and a real ``redis-server`` on free
ports; instances share state only through Redis.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tests.server_proc import launch_server, start_server
from tests.timing import FAR_S, SLACK_S

FRIEND = "callbackBeforeAddFriendCommand"
INVITE = "callbackBeforeInviteJoinGroupCommand"
ACK = {"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0}


def wait_for(check, timeout: float, what: str):
    """Poll a condition on a live system (no fixed sleeps); return the time it took."""
    started = time.monotonic()
    while True:
        value = check()
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def two_instances(redis_standalone):
    prefix = "e2e" + uuid.uuid4().hex[:8]
    a = start_server("--redis", redis_standalone.url, "--prefix", prefix)
    b = start_server("--redis", redis_standalone.url, "--prefix", prefix)
    yield a, b
    a.stop()
    b.stop()


def test_activation_through_one_instance_is_served_by_the_other(two_instances):
    # How fast is the store's business (tests/test_store_common.py checks the notification
    # path with polling off); here: every change reaches the other instance.
    a, b = two_instances
    assert b.callback(FRIEND, {}).json() == ACK
    assert a.upload(FRIEND, "def handle(req):\n    return deny(5001, 'v1')\n").status == 201
    wait_for(lambda: b.callback(FRIEND, {}).json().get("errMsg") == "v1", FAR_S, "b to serve v1")
    v2 = a.upload(FRIEND, "def handle(req):\n    return deny(5002, 'v2')\n", activate=False).json()["version"]
    assert b.callback(FRIEND, {}).json()["errMsg"] == "v1"  # a draft is not live anywhere
    # promote through b, observe through a
    assert b.admin("POST", f"/admin/scripts/{FRIEND}/activate", {"version": v2}).status == 200
    wait_for(lambda: a.callback(FRIEND, {}).json().get("errMsg") == "v2", FAR_S, "a to serve v2")
    # deactivate through a, observe through b
    assert a.request("DELETE", f"/admin/scripts/{FRIEND}").status == 200
    wait_for(lambda: b.callback(FRIEND, {}).json() == ACK, FAR_S, "b to stop the script")
    # both see the same versions and audit trail
    assert a.request("GET", f"/admin/scripts/{FRIEND}/versions").json() == b.request(
        "GET", f"/admin/scripts/{FRIEND}/versions").json()


def test_counters_are_shared_between_instances(two_instances):
    a, b = two_instances
    key = "count:" + uuid.uuid4().hex[:6]
    src = f"def handle(req):\n    return deny(5001, str(kv.incr({key!r}, 1, ttl=600)))\n"
    a.upload(FRIEND, src)
    wait_for(lambda: b.callback(FRIEND, {}).json().get("errCode") == 5001, FAR_S, "b to load the script")
    seen = []

    def hammer(srv, n):
        for _ in range(n):
            seen.append(int(srv.callback(FRIEND, {}).json()["errMsg"]))

    threads = [threading.Thread(target=hammer, args=(srv, 25)) for srv in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = int(a.request("GET", f"/admin/kv/{key}").json()["value"])
    assert final == 101  # the warm-up call + 100 concurrent increments, none lost
    assert len(set(seen)) == 100  # every caller saw a distinct value: atomic increments


def test_blocklist_write_visible_to_the_next_read_on_every_instance(two_instances):
    a, b = two_instances
    key = "bl:" + uuid.uuid4().hex[:6]
    src = f"def handle(req):\n    if kv.sismember({key!r}, req['fromUserID']):\n        return deny(5001, 'blocked')\n"
    a.upload(FRIEND, src)
    wait_for(lambda: b.request("GET", f"/admin/scripts/{FRIEND}").status == 200, FAR_S, "script on b")
    for i in range(30):
        user = f"u{i}"
        # warm b's cache with an allow, block through a, and b must refuse at once
        assert b.callback(FRIEND, {"fromUserID": user}).json() == ACK
        a.admin("POST", f"/admin/kv/{key}/members", {"add": [user]})
        assert b.callback(FRIEND, {"fromUserID": user}).json()["errMsg"] == "blocked", i
        a.admin("POST", f"/admin/kv/{key}/members", {"remove": [user]})
        assert b.callback(FRIEND, {"fromUserID": user}).json() == ACK, i


def test_redis_killed_mid_traffic_and_restarted(redis_factory):
    redis = redis_factory()
    srv = start_server("--redis", redis.url, "--prefix", "fault")
    try:
        srv.upload(FRIEND, "def handle(req):\n    kv.incr('calls', 1)\n    return deny(5001, 'ok')\n")
        assert srv.callback(FRIEND, {}).json()["errCode"] == 5001
        results, stop = [], threading.Event()

        def traffic():
            while not stop.is_set():
                t0 = time.monotonic()
                r = srv.callback(FRIEND, {})
                results.append((r.status, r.json(), time.monotonic() - t0))

        t = threading.Thread(target=traffic)
        t.start()
        wait_for(lambda: len(results) > 20, FAR_S, "traffic")
        redis.server.kill()
        n = len(results)
        wait_for(lambda: len(results) > n + 20, FAR_S, "callbacks during the outage")
        # during the outage: answered on time by the failure policy (open: continue)
        outage = results[n + 2:]
        assert all(status == 200 for status, _, _ in outage)
        assert any(body == ACK for _, body, _ in outage)
        assert max(elapsed for _, _, elapsed in outage) < 2.0 + SLACK_S  # the 2 s deadline held
        health = srv.request("GET", "/healthz", token=False).json()
        assert health["status"] == "degraded"
        r = srv.upload(FRIEND, "def handle(req):\n    return allow()\n")
        assert r.status == 503 and r.json()["error"] == "store_unavailable"
        redis.server.start()  # same port, empty data
        wait_for(lambda: srv.request("GET", "/healthz", token=False).json()["status"] == "ok", FAR_S, "recovery")
        # Redis came back empty (no persistence here), and the instance follows it once its
        # watcher reloads the registry: waiting for the old script's deny would race that
        # reload. Writes work again, and a script using the KV is served. The instance also
        # writes its last known live scripts back; once it has, uploading the same source is
        # answered 200 "unchanged" (an audited write) instead of 201: either proves writes work.
        script = "def handle(req):\n    kv.incr('calls', 1)\n    return deny(5001, 'ok')\n"
        wait_for(lambda: srv.upload(FRIEND, script).status in (200, 201), FAR_S, "uploads to work again")
        wait_for(lambda: srv.callback(FRIEND, {}).json().get("errCode") == 5001, FAR_S, "the KV to work again")
        stop.set()
        t.join()
        assert all(status == 200 for status, _, _ in results)
    finally:
        stop.set()
        srv.stop()


def test_redis_down_at_start(redis_factory):
    redis = redis_factory()
    redis.server.kill()
    srv = launch_server("--redis", redis.url, "--prefix", "down")
    try:
        # not "ready" while the store is down (the retry lines say why), yet callbacks are
        # answered, by the failure policy
        srv.wait_line(r"unreachable \(Connection refused\); retrying in 1s \(attempt 1\)")
        assert srv.request("GET", "/healthz", token=False).json()["status"] == "degraded"
        t0 = time.monotonic()
        assert srv.callback(FRIEND, {}).json() == ACK  # open policy while scripts are unknown
        assert time.monotonic() - t0 < 2.0 + SLACK_S
        assert srv.upload(FRIEND, "def handle(req):\n    return allow()\n").status == 503
        assert not any("ready on" in line for line in srv.output)
        redis.server.start()
        srv.wait_line("ready on")
        assert srv.request("GET", "/healthz", token=False).json()["status"] == "ok"
        assert srv.upload(FRIEND, "def handle(req):\n    return deny(5001, 'up')\n").status == 201
        assert srv.callback(FRIEND, {}).json()["errMsg"] == "up"
    finally:
        srv.stop()


@pytest.mark.parametrize("backend", ["cluster", "sentinel"])
def test_serving_on_cluster_and_sentinel(request, backend):
    setup = request.getfixturevalue(f"redis_{backend}")
    srv = start_server("--redis", setup.url, "--prefix", "b" + uuid.uuid4().hex[:6])
    try:
        assert srv.request("GET", "/healthz", token=False).json()["status"] == "ok"
        key = "k" + uuid.uuid4().hex[:6]
        srv.admin("POST", f"/admin/kv/{key}/members", {"add": ["u2"]})
        src = (f"def handle(req):\n    flags = kv.smismember({key!r}, req['invitedUserIDs'])\n"
               "    blocked = [u for u, f in zip(req['invitedUserIDs'], flags) if f]\n"
               "    return deny(5001, 'blocked', ','.join(blocked)) if blocked else allow()\n")
        assert srv.upload(INVITE, src).status == 201
        r = srv.callback(INVITE, {"invitedUserIDs": ["u1", "u2"], "groupID": "g"})
        assert r.json()["errDlt"] == "u2"
        n = srv.upload(INVITE, "def handle(req):\n    return deny(5001, 'x')\n").json()["version"]
        assert srv.admin("POST", f"/admin/scripts/{INVITE}/activate", {"version": n - 1}).status == 200
        r2 = srv.callback(INVITE, {"invitedUserIDs": ["u1", "u2"]}).json()
        assert r2.get("errDlt") == "u2", r2
    finally:
        srv.stop()
