# Rate-limit friend requests: at most LIMIT requests per sender per WINDOW seconds.
#
# kv.incr(key, 1, ttl=WINDOW) increments atomically and starts the window's expiry on the
# first request, so concurrent callbacks on several ScriptGate instances share one count.
# The limit can be changed at run time: HSET "config:friend_requests" "limit" <n>.

WINDOW = 3600
DEFAULT_LIMIT = 20


def handle(req):
    sender = req.get("fromUserID") or ""
    if not sender:
        return allow()
    limit = int(kv.hget("config:friend_requests", "limit") or DEFAULT_LIMIT)
    count = kv.incr("ratelimit:friend_requests:" + sender, 1, ttl=WINDOW)
    if count > limit:
        return deny(5201, "too many friend requests", "limit is %d per hour" % limit)
    return allow()
