"""--redis URL parsing (no servers needed)."""

from __future__ import annotations

import pytest

from server.store import urls


def test_standalone_urls() -> None:
    t = urls.parse("redis://:s3cret@cache.local:6380/2?timeout=0.2&health_check_interval=5")
    assert (t.mode, t.db, t.password, t.ssl) == ("standalone", 2, "s3cret", False)
    assert t.store_options == {"timeout": "0.2"}
    assert t.redis_options == {"health_check_interval": 5}
    assert t.url is not None and "timeout" not in t.url and "health_check_interval=5" in t.url
    assert "s3cret" not in t.display and "***" in t.display
    t = urls.parse("rediss://user:pw@h?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required")
    assert t.ssl and t.username == "user" and t.redis_options["ssl_ca_certs"] == "/ca.pem"
    t = urls.parse("unix:///run/redis.sock?db=3&cache=off")
    assert t.mode == "standalone" and t.db == 3 and urls.bool_option(t, "cache", True) is False


def test_sentinel_urls() -> None:
    t = urls.parse("redis+sentinel://:pw@s1:26379,s2:26380,[::1]:26381/mymaster/4?sentinel_password=sp")
    assert t.mode == "sentinel" and t.service == "mymaster" and t.db == 4
    assert t.hosts == [("s1", 26379), ("s2", 26380), ("::1", 26381)]
    assert t.password == "pw" and t.store_options["sentinel_password"] == "sp"
    assert urls.parse("redis+sentinel://s1/svc").hosts == [("s1", 26379)]
    assert urls.parse("rediss+sentinel://s1/svc").ssl
    with pytest.raises(ValueError, match="service"):
        urls.parse("redis+sentinel://s1:26379")


def test_cluster_urls() -> None:
    t = urls.parse("redis+cluster://:pw@n1:7000,n2:7001")
    assert t.mode == "cluster" and t.hosts == [("n1", 7000), ("n2", 7001)] and t.password == "pw"
    t = urls.parse("redis://n1:7000?cluster=true")
    assert t.mode == "cluster" and t.hosts == [("n1", 7000)] and "cluster" not in t.redis_options
    with pytest.raises(ValueError):
        urls.parse("redis+cluster://n1:7000/3")


@pytest.mark.parametrize("bad", ["http://x", "redis://h?cluster=maybe", "redis://h:port", "redis://h/abc",
                                 "redis+cluster://", "redis://h?health_check_interval=x"])
def test_bad_urls(bad: str) -> None:
    with pytest.raises(ValueError):
        urls.parse(bad)


def test_prefix_rules() -> None:
    from server.store.keys import Keys

    assert Keys("scriptgate").gen == "scriptgate:{s}:gen"
    for bad in ("", "a:b", "a{b", "a b", "x" * 65, "é"):
        with pytest.raises(ValueError):
            Keys(bad)


@pytest.mark.parametrize("url", [
    "redis://h:6379/0", "redis://:pw@h/2?health_check_interval=5&timeout=0.2", "rediss://u:pw@h:6380?ssl_cert_reqs=none",
    "unix:///run/redis.sock", "unix:///run/redis.sock?db=3&cache=off", "unix://:pw@/run/redis.sock",
])
def test_standalone_urls_are_read_by_redis_py_itself(url: str) -> None:
    """The URL handed to redis-py is the user's own, so redis-py's parser (whatever its
    version) reads it; rewriting it once produced ``unix:/path``, which redis-py 8 refuses."""
    from redis.asyncio.connection import parse_url

    target = urls.parse(url)
    assert target.url is not None
    parsed = parse_url(target.url)
    if url.startswith("unix"):
        assert parsed["path"] == "/run/redis.sock"
    assert "timeout" not in target.url and "cache" not in target.url
