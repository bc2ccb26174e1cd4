"""The namespace / prefix / command rules of server/store/keys.py, their one home."""

import pytest

from server.config import ConfigError, build
from server.store.base import StoreError
from server.store.keys import check_command, check_namespace, check_prefix, is_command, is_namespace, is_prefix


@pytest.mark.parametrize("value", ["default", "a-b_C9", "x" * 64])
def test_namespace_accepts(value):
    assert is_namespace(value) and check_namespace(value) == value


@pytest.mark.parametrize("value", ["", "a:b", "a.b", "x" * 65, "a\n", "\na", "a b", None, 5])
def test_namespace_refuses(value):
    # "a\n" passed the old ^...$ copy in config.py ($ matches before a trailing newline).
    assert not is_namespace(value)
    with pytest.raises(StoreError, match=r"namespace must match \[A-Za-z0-9_-\]\{1,64\}"):
        check_namespace(value)


def test_prefix_and_command_rules():
    assert is_prefix("scriptgate.v2") and not is_prefix("a:b") and not is_prefix("p\n")
    assert is_command("callbackBeforeInviteJoinGroupCommand") and not is_command("c\n") and not is_command("x" * 129)
    with pytest.raises(ValueError, match=r"prefix must match \[A-Za-z0-9_.-\]\{1,64\}"):
        check_prefix("a:b")
    with pytest.raises(StoreError, match=r"command must match \[A-Za-z0-9_.-\]\{1,128\}"):
        check_command("a/b")


def test_config_uses_the_same_rules():
    with pytest.raises(ConfigError, match=r"namespace must match \[A-Za-z0-9_-\]\{1,64\}"):
        build({"defaults": {"namespace": "a\n"}})
    with pytest.raises(ConfigError, match=r"prefix must match \[A-Za-z0-9_.-\]\{1,64\}"):
        build({"prefix": "p\n"})
