import os
import stat

import pytest

from otpgate.vault import Binding, Keyring, VaultError, keygen, read_raw_keys

GUID = bytes.fromhex("00112233445566778899aabbccddeeff")
B = Binding(GUID, "postalAddress", "seed")


def ring(*kids, current=None):
    keys = {k: os.urandom(32) for k in kids}
    return Keyring(keys, current or kids[-1]), keys


def test_round_trip_text_and_binary():
    kr, _ = ring("a")
    env = kr.encrypt(b"secret", B)
    assert env.startswith("v1.a.") and "secret" not in env
    assert kr.decrypt(env, B) == b"secret"
    benv = kr.encrypt_binary(b"secret", B)
    assert kr.decrypt_binary(benv, B) == b"secret"
    assert kr.key_id_of(env) == kr.key_id_of(benv) == "a"


@pytest.mark.parametrize(
    "other",
    [
        Binding(bytes(16), "postalAddress", "seed"),  # another user
        Binding(GUID, "registeredAddress", "seed"),  # another attribute
        Binding(GUID, "postalAddress", "token"),  # another purpose
    ],
)
def test_copied_value_does_not_decrypt(other):
    kr, _ = ring("a")
    with pytest.raises(VaultError, match="copied from another entry"):
        kr.decrypt(kr.encrypt(b"x", B), other)


def test_attribute_name_is_case_insensitive():
    kr, _ = ring("a")
    assert kr.decrypt(kr.encrypt(b"x", B), Binding(GUID, "POSTALADDRESS", "seed")) == b"x"


def test_tampering_detected():
    kr, _ = ring("a")
    env = kr.encrypt(b"x", B)
    v, kid, nonce, ct = env.split(".")
    flipped = ct[:-2] + ("A" if ct[-2] != "A" else "B") + ct[-1]
    with pytest.raises(VaultError):
        kr.decrypt(".".join((v, kid, nonce, flipped)), B)
    with pytest.raises(VaultError, match="not an otpgate"):
        kr.decrypt("garbage", B)


def test_rotation_old_values_still_decrypt():
    keys = {"old": os.urandom(32)}
    old_ring = Keyring(keys, "old")
    env = old_ring.encrypt(b"x", B)
    keys["new"] = os.urandom(32)
    new_ring = Keyring(keys, "new")
    assert new_ring.decrypt(env, B) == b"x"
    assert new_ring.encrypt(b"x", B).split(".")[1] == "new"
    with pytest.raises(VaultError, match="not in the keyring"):
        Keyring({"new": keys["new"]}, "new").decrypt(env, B)


def test_keygen_file_mode_and_rotation(tmp_path):
    path = tmp_path / "keyring.json"
    keygen(path, "k1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keygen(path, "k2")
    keys, current = read_raw_keys(path)
    assert set(keys) == {"k1", "k2"} and current == "k2"
    keygen(path, "k3", make_current=False)
    assert Keyring.load(path).current == "k2"
    with pytest.raises(VaultError, match="already has"):
        keygen(path, "k1")


def test_load_refuses_world_readable_and_broken(tmp_path):
    path = tmp_path / "k.json"
    keygen(path, "k1")
    os.chmod(path, 0o644)
    with pytest.raises(VaultError, match="chmod 600"):
        Keyring.load(path)
    os.chmod(path, 0o600)
    path.write_text("{not json")
    with pytest.raises(VaultError, match="not a keyring file"):
        Keyring.load(path)


def test_bad_keys_refused():
    with pytest.raises(VaultError, match="32 bytes"):
        Keyring({"a": b"short"}, "a")
    with pytest.raises(VaultError, match="key id"):
        Keyring({"a.b": os.urandom(32)}, "a.b")
    with pytest.raises(VaultError, match="current key"):
        Keyring({"a": os.urandom(32)}, "b")
