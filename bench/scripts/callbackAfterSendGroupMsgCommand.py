# ruff: noqa: F821  (kv is a sandbox global)
# Benchmark script for the after-callback flood: count messages per group.
# After-callbacks cannot change anything: the reply is always the plain ack.


def handle(req):
    kv.incr("stats:msgs:" + (req.get("groupID") or ""))
