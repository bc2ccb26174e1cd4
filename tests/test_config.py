import pytest

from server import config
from server.catalog import catalog

KNOWN = set(catalog().commands)


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return str(p)


def test_defaults():
    cfg = config.load(None, KNOWN)
    s = cfg.settings_for("callbackBeforeInviteJoinGroupCommand")
    assert cfg.port == 10006 and s.failure_policy == "open" and s.budgets.wall_ms == 1000
    assert s.deadline_ms < 5000  # below OpenIM's default webhook timeout


def test_per_command_overrides(tmp_path):
    cfg = config.load(
        write(
            tmp_path,
            """
path_prefix = "hook-secret"
allow_cidrs = ["10.0.0.0/8"]
[defaults]
deadline_ms = 1500
[defaults.budgets]
wall_ms = 500
[commands.callbackBeforeSendSingleMsgCommand]
failure_policy = "closed"
reject_errcode = 5999
reject_errmsg = "try again later"
[commands.callbackBeforeSendSingleMsgCommand.budgets]
steps = 1000
[record]
sample = 0.5
redact = ["content"]
[record.commands.callbackBeforeAddFriendCommand]
enabled = true
""",
        ),
        KNOWN,
    )
    s = cfg.settings_for("callbackBeforeSendSingleMsgCommand")
    assert (s.failure_policy, s.reject_errcode, s.budgets.steps, s.budgets.wall_ms) == ("closed", 5999, 1000, 500)
    assert cfg.settings_for("callbackBeforeAddFriendCommand").record.enabled
    assert cfg.settings_for("callbackBeforeAddFriendCommand").record.redact == ("content",)
    assert not cfg.settings_for("callbackBeforeSendSingleMsgCommand").record.enabled
    assert cfg.path_prefix == "/hook-secret"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[commands.callbackNope]\nfailure_policy='closed'", "not an OpenIM callbackCommand"),
        ("[defaults]\nfailure_policy='maybe'", "failure_policy"),
        ("[defaults]\nreject_errcode=50", "reject_errcode"),
        ("[defaults]\ndeadline_ms=60000", "deadline_ms"),
        ("[defaults.budgets]\nwall_ms=5000", "wall_ms must be below"),
        ("[defaults.budgets]\nbogus=1", "unknown budget"),
        ("allow_cidrs=['10.0.0.0/33']", "allow_cidrs"),
        ("colour = 'blue'", "unknown setting"),
        ("port = [", "config file"),
        ("[defaults]\nnamespace='a:b'", "namespace"),
        ("event_loop = 'trio'", "event_loop"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, needle):
    with pytest.raises(config.ConfigError) as exc:
        config.load(write(tmp_path, text), KNOWN)
    assert needle in str(exc.value)


def test_penalty_box_settings() -> None:
    from server.config import ConfigError, build, penalty_box_settings

    cfg = build({"penalty_box": {"base_s": 2, "max_s": 120.0, "strikes": 5}})
    box = penalty_box_settings(cfg)
    assert (box.base_s, box.max_s, box.strikes, box.window) == (2, 120.0, 5, 10)
    assert penalty_box_settings(build({})).base_s == 1.0
    assert penalty_box_settings(build({})).refusal_delay_ms == 20.0
    assert penalty_box_settings(build({"penalty_box": {"refusal_delay_ms": 0}})).refusal_delay_ms == 0
    for bad in ({"nope": 1}, {"base_s": 0}, {"strikes": 2.5}, {"max_s": "x"}, {"refusal_delay_ms": -1},
                {"refusal_delay_ms": 5000}, {"refusal_delay_ms": "20"}):
        with pytest.raises(ConfigError, match="penalty_box"):
            build({"penalty_box": bad})
