# Keyword filter on group text messages.
#
# Text messages (contentType 101) carry their text as JSON in "content":
# {"content": "hello"}. A message with a word from the KV set "filter:words" is refused.
# All the message's words are checked in one KV call (smismember), however many there are.

TEXT = 101
WORD = re.compile(r"\w+")


def message_text(req):
    if req.get("contentType") != TEXT:
        return ""
    try:
        body = json.loads(req.get("content") or "{}")
    except ValueError:
        return ""
    text = body.get("content") if isinstance(body, dict) else None
    return text if isinstance(text, str) else ""


def handle(req):
    words = sorted(set(w.lower() for w in WORD.findall(message_text(req))))[:1000]
    if words and any(kv.smismember("filter:words", words)):
        return deny(5301, "message blocked", "the message contains a blocked word")
    return allow()
