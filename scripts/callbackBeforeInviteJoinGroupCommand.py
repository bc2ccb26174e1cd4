# Invitation blocklist (seed: "Callback Before Inviting New Members to Group").
#
# Users in the KV set "blocklist:users" cannot be invited to any group. If every invitee
# is blocked the invitation is refused; if only some are, the others are still invited
# (the reply narrows invitedUserIDs, as the OpenIM documentation describes).
#
# Manage the blocklist without touching this script:
#   curl -X POST -H "Authorization: Bearer $TOKEN" localhost:10006/admin/kv/blocklist:users/members \
#        -d '{"add": ["user2"]}'

BLOCKLIST = "blocklist:users"
CHUNK = 500  # smismember takes at most 1000 members per call


def blocked_flags(user_ids):
    flags = []
    for start in range(0, len(user_ids), CHUNK):
        flags.extend(kv.smismember(BLOCKLIST, user_ids[start:start + CHUNK]))
    return flags


def handle(req):
    invited = req.get("invitedUserIDs") or []
    if not invited:
        return allow()
    flags = blocked_flags(invited)
    blocked = [u for u, b in zip(invited, flags) if b]
    if len(blocked) == len(invited):
        log("refused invitation to", req.get("groupID"), "blocked:", blocked)
        return deny(5001, "invitation refused", "blocked: " + ", ".join(blocked))
    allowed = [u for u, b in zip(invited, flags) if not b]
    if blocked:
        log("dropped blocked invitees", blocked, "from group", req.get("groupID"))
    return allow(invitedUserIDs=allowed)
