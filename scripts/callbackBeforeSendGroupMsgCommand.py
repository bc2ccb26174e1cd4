# Keyword filter on group text messages.
#
# Text messages (contentType 101) carry their text as JSON in "content":
# {"content": "hello"}. A message with a word from the KV set "filter:words" is refused.
# Matching ignores case. All the message's words are checked in one KV call (smismember),
# however many there are (the first 1,000 distinct words in sorted order).

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


def message_words(text):
    """The distinct lower-case words of text, as if each word were lower-cased on its own."""
    if "\u0130" in text or "\u03a3" in text:
        # The only two letters for which lower-casing the whole text differs from
        # lower-casing each word: capital I with dot above becomes "i" + a combining dot
        # (not a word character: the word would split), and capital sigma becomes final
        # or non-final sigma depending on the letters around it, even across punctuation.
        return set(w.lower() for w in WORD.findall(text))
    return set(WORD.findall(text.lower()))  # one lower() per message, not one per word


def handle(req):
    words = sorted(message_words(message_text(req)))[:1000]
    if words and any(kv.smismember("filter:words", words)):
        return deny(5301, "message blocked", "the message contains a blocked word")
    return allow()
