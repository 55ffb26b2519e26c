import os
import stat

import pytest

from otpgate.errors import VaultError
from otpgate.vault import (
    Binding,
    Keyring,
    check_key_id,
    keygen,
    make_current,
    read_raw_keys,
    write_keyring,
)

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


# -- keyring file attacks ------------------------------------------------------------------


def test_key_id_with_a_trailing_newline_is_refused():
    """`^...$` with re.match accepts "k1\\n"; key ids are checked with fullmatch."""
    assert check_key_id("k1") == "k1"
    with pytest.raises(VaultError, match="key id"):
        check_key_id("k1\n")


def test_keyring_temporary_file_is_never_written_through_a_symlink(tmp_path):
    """A symlink planted at keyring.json.tmp pointing at another file: a writer that opens
    it with O_CREAT|O_TRUNC, then chmods and renames it, would truncate and fill that file
    with every key and make the keyring a symlink to it."""
    path = tmp_path / "keyring.json"
    keygen(path, "k1")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    tmp = tmp_path / "keyring.json.tmp"
    tmp.symlink_to(victim)
    keygen(path, "k2")
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not path.is_symlink() and stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert not tmp.exists() and not tmp.is_symlink()  # the stale name is gone
    assert set(read_raw_keys(path)[0]) == {"k1", "k2"}


def test_stale_temporary_file_is_replaced_safely(tmp_path):
    path = tmp_path / "keyring.json"
    keygen(path, "k1")
    stale = tmp_path / "keyring.json.tmp"
    stale.write_text("half a keyring from a crashed run")
    keygen(path, "k2")
    assert not stale.exists()
    assert Keyring.load(path).current == "k2"


def test_keyring_lock_file_is_not_followed(tmp_path):
    path = tmp_path / "keyring.json"
    (tmp_path / "keyring.json.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(VaultError, match="lock"):
        keygen(path, "k1")
    assert not (tmp_path / "elsewhere").exists() and not path.exists()


def test_make_current_switches_to_a_staged_key(tmp_path):
    path = tmp_path / "keyring.json"
    keygen(path, "k1")
    keygen(path, "k2", make_current=False)
    assert Keyring.load(path).current == "k1"
    assert make_current(path, "k2") == "k1"
    assert Keyring.load(path).current == "k2"
    assert make_current(path, "k2") == "k2"  # already current: nothing to do
    with pytest.raises(VaultError, match="no key 'k9'"):
        make_current(path, "k9")
    assert set(read_raw_keys(path)[0]) == {"k1", "k2"}


def test_keyring_writers_take_the_lock(tmp_path):
    """keygen is a read-modify-write: a second writer waits for the lock instead of
    overwriting a key added meanwhile."""
    import fcntl
    import threading

    path = tmp_path / "keyring.json"
    keygen(path, "k1")
    done = threading.Event()
    with open(tmp_path / "keyring.json.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        writer = threading.Thread(target=lambda: (keygen(path, "k2"), done.set()))
        writer.start()
        assert not done.wait(0.5)  # blocked by the lock
        keys, current = read_raw_keys(path)
        write_keyring(path, {**keys, "k3": os.urandom(32)}, current)  # the lock holder's change
    writer.join(10)
    assert done.is_set() and set(read_raw_keys(path)[0]) == {"k1", "k2", "k3"}
