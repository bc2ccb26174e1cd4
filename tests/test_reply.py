import orjson

from server import reply


def test_ack_is_exact_bytes():
    assert reply.encode(reply.continue_with()) == b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'


def test_reject_shape_and_types():
    body = orjson.loads(reply.encode(reply.reject(5001, "invitation refused", "blocked: user2")))
    assert body == {"actionCode": 0, "errCode": 5001, "errMsg": "invitation refused", "errDlt": "blocked: user2", "nextCode": 1}
    assert all(type(body[k]) is int for k in ("actionCode", "errCode", "nextCode"))


def test_modify_keeps_common_fields_first_and_order_of_changes():
    raw = reply.encode(reply.continue_with({"invitedUserIDs": ["user1", "user2"]}))
    # byte-identical to the seed document's "Approval Response"
    assert raw == b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0,"invitedUserIDs":["user1","user2"]}'


def test_error_body_is_a_valid_openim_reply():
    body = orjson.loads(reply.error_body("invalid_json", "bad", reply.continue_with()))
    assert body["nextCode"] == 0 and body["actionCode"] == 0
    assert body["error"] == {"code": "invalid_json", "message": "bad"}
