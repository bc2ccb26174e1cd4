# Member-info moderation (seed: "Callback Before Setting Group Member Info").
#
# - Nickname filter: a group nickname containing a word from the KV set
#   "moderation:nickname_words" (or a link) is refused; surrounding and repeated spaces
#   are tidied up and the cleaned nickname is sent back.
# - Role-change guard: roleLevel may only be 20 (member) or 60 (admin), and groups in the
#   KV set "moderation:frozen_roles" accept no role changes at all.
#
# Fields that are null in the request are not being changed; they are left alone.

MEMBER, ADMIN = 20, 60
LINK = re.compile(r"(?i)(https?://|www\.)")


def clean_nickname(name):
    return " ".join(name.split())


def handle(req):
    changes = {}
    nick = req.get("nickName")
    if nick is not None:
        cleaned = clean_nickname(nick)
        if LINK.search(cleaned):
            return deny(5101, "nickname not allowed", "links are not allowed in group nicknames")
        words = [w for w in cleaned.lower().split(" ") if w]
        if words and any(kv.smismember("moderation:nickname_words", words[:1000])):
            return deny(5102, "nickname not allowed", "the nickname contains a blocked word")
        if cleaned != nick:
            changes["nickName"] = cleaned

    role = req.get("roleLevel")
    if role is not None:
        if role not in (MEMBER, ADMIN):
            return deny(5103, "role change refused", "roleLevel must be 20 (member) or 60 (admin)")
        if kv.sismember("moderation:frozen_roles", req["groupID"]):
            return deny(5104, "role change refused", "roles are frozen in this group")

    return allow(**changes)
