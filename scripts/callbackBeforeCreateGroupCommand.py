# Restrict group creation.
#
# - If the KV set "groups:creators" is not empty, only its members may create groups.
# - Everyone is limited to DAILY_LIMIT new groups per day.
# - Groups may not be open to anyone: needVerification 2 ("join directly") is changed to
#   1 ("everyone needs approval").

DAILY_LIMIT = 10
DAY = 86400


def handle(req):
    creator = req.get("creatorUserID") or req.get("ownerUserID") or ""
    if kv.scard("groups:creators") and not kv.sismember("groups:creators", creator):
        return deny(5401, "group creation not allowed", "only approved users may create groups")
    created = kv.incr("groups:created_today:" + creator, 1, ttl=DAY)
    if created > DAILY_LIMIT:
        return deny(5402, "group creation limit reached", "at most %d groups per day" % DAILY_LIMIT)
    if req.get("needVerification") == 2:
        return allow(needVerification=1)
    return allow()
