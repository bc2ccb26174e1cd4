# Invitation blocklist (seed: "Callback Before Inviting New Members to Group").
#
# Users in the KV set "blocklist:users" cannot be invited to any group: an invitation
# that names any of them is refused as a whole, and the refusal says who is blocked.
#
# Why not just leave the blocked users out with allow(invitedUserIDs=[...])? OpenIM
# (main and v3.8) ignores invitedUserIDs in this reply and would add everybody; ScriptGate
# therefore answers a narrowed list with a rejection anyway (config invite_narrowing,
# docs/openim.md). Refusing here says so plainly.
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
    if blocked:
        log("refused invitation to", req.get("groupID"), "blocked:", blocked)
        return deny(5001, "invitation refused", "blocked: " + ", ".join(blocked))
    return allow()
