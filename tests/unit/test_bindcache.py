from otpgate.auth.bindcache import BindCache


def test_hit_only_for_the_same_secret_name_client_and_within_ttl():
    cache = BindCache(ttl=5)
    cache.remember("uid=a,dc=x", "10.0.0.1", "pw123456", 2, "uid=a,dc=x", now=100)
    hit = cache.lookup("UID=A,DC=X", "10.0.0.1", "pw123456", now=104)
    assert hit is not None and hit.password_length == 2 and hit.dn == "uid=a,dc=x"
    assert cache.lookup("uid=a,dc=x", "10.0.0.2", "pw123456", now=101) is None  # other client
    assert cache.lookup("uid=a,dc=x", "10.0.0.1", "pw123457", now=101) is None  # other secret
    assert cache.lookup("uid=a,dc=x", "10.0.0.1", "pw123456", now=105) is None  # expired


def test_holds_no_secret_and_is_bounded():
    cache = BindCache(ttl=5, max_entries=3)
    for i in range(5):
        cache.remember(f"u{i}", None, f"password{i}999999", 9, f"uid=u{i}", now=0)
    assert len(cache._entries) == 3
    assert all(b"password" not in e.digest for e in cache._entries.values())
    assert cache.lookup("u0", None, "password0999999", now=1) is None  # evicted
    assert cache.lookup("u4", None, "password4999999", now=1) is not None


def test_disabled_with_zero_ttl():
    cache = BindCache(ttl=0)
    cache.remember("u", None, "s", 1, "dn", now=0)
    assert cache.lookup("u", None, "s", now=0) is None
