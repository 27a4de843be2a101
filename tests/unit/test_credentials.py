"""Keys from env, inline values and files: re-read on change (also the Kubernetes `..data` symlink
swap), the last good key kept when a file is unusable, never shown; client-key rotation."""

from __future__ import annotations

import logging
import os

import pytest

from detour_proxy.config import SecretSource
from detour_proxy.config.credentials import ClientKeys, Credential
from e2e.proxyproc import K8sVolume

SECRET = "sk-very-SECRET-123"


class Tick:
    """A manual clock for the per-use re-check."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_env_and_inline_sources(monkeypatch, caplog):
    monkeypatch.setenv("DETOUR_TEST_KEY", SECRET)
    assert Credential(SecretSource(env="DETOUR_TEST_KEY")).get() == SECRET
    assert Credential(SecretSource(value=SECRET)).get() == SECRET
    monkeypatch.delenv("DETOUR_TEST_KEY")
    with caplog.at_level(logging.WARNING, logger="detour.credentials"):
        assert Credential(SecretSource(env="DETOUR_TEST_KEY")).get() is None
    assert "DETOUR_TEST_KEY" in caplog.text
    assert Credential(SecretSource(env="DETOUR_TEST_KEY")).file is None


def test_file_is_re_read_after_the_recheck_interval_when_it_changed(tmp_path):
    path = tmp_path / "key"
    path.write_text("sk-one\n")
    clock = Tick()
    cred = Credential(SecretSource(file=str(path)), recheck=1.0, clock=clock)
    assert cred.get() == "sk-one" and cred.file == str(path)
    tmp = tmp_path / ".key.tmp"
    tmp.write_text("sk-two\n")
    os.replace(tmp, path)                       # editor-style rename over the file
    clock.t = 0.5
    assert cred.get() == "sk-one", "no stat before the re-check interval"
    clock.t = 1.0
    assert cred.get() == "sk-two"


def test_kubernetes_data_symlink_swap_is_seen_and_refresh_does_not_wait(tmp_path, caplog):
    vol = K8sVolume(tmp_path / "secret", {"upstream": "sk-old\n"})
    clock = Tick()
    cred = Credential(SecretSource(file=str(vol.path("upstream"))), recheck=3600.0, clock=clock)
    assert cred.get() == "sk-old"
    vol.update({"upstream": "sk-new\n"})         # new ..<version> dir, `..data` swapped atomically
    assert cred.get() == "sk-old", "per-use re-check is an hour away"
    with caplog.at_level(logging.INFO, logger="detour.credentials"):
        cred.refresh()                           # what the config watcher calls on a change
    assert cred.get() == "sk-new"
    assert "changed" in caplog.text and "sk-new" not in caplog.text and "sk-old" not in caplog.text


@pytest.mark.parametrize("breakage", ["deleted", "directory", "not utf-8", "empty"])
def test_an_unusable_file_keeps_the_last_good_key_and_says_so_once(tmp_path, caplog, breakage):
    path = tmp_path / "key"
    path.write_text(SECRET)
    clock = Tick()
    cred = Credential(SecretSource(file=str(path)), recheck=1.0, clock=clock)
    assert cred.get() == SECRET
    path.unlink()
    if breakage == "directory":
        path.mkdir()
    elif breakage == "not utf-8":
        path.write_bytes(b"\xff\xfe\x00bad")
    elif breakage == "empty":
        path.write_text("")
    with caplog.at_level(logging.WARNING, logger="detour.credentials"):
        for i in range(1, 4):
            clock.t = float(i)
            assert cred.get() == SECRET
    assert len([r for r in caplog.records if r.name == "detour.credentials"]) == 1, caplog.text
    assert "keeping the last good key" in caplog.text and SECRET not in caplog.text
    # Fixed: the new key is used at the next re-check, or (a file written in place that reuses
    # the inode number could be half-written) at the one after, when two reads agree.
    if path.is_dir():
        path.rmdir()
    path.write_text("sk-fixed")
    clock.t = 10.0
    assert cred.get() in ("sk-fixed", SECRET)
    clock.t = 11.0
    assert cred.get() == "sk-fixed"


def test_the_value_never_appears_in_repr_or_str(tmp_path):
    path = tmp_path / "key"
    path.write_text(SECRET)
    for source in (SecretSource(value=SECRET), SecretSource(file=str(path))):
        cred = Credential(source)
        assert cred.get() == SECRET
        for text in (repr(cred), str(cred), cred.describe, repr(ClientKeys([source]))):
            assert SECRET not in text
    assert str(path) in repr(Credential(SecretSource(file=str(path))))


def test_client_key_rotation_accepts_the_new_key_and_rejects_the_old(tmp_path):
    vol = K8sVolume(tmp_path / "client-keys", {"team-a": "ck-old\n"})
    clock = Tick()
    keys = ClientKeys([SecretSource(file=str(vol.path("team-a"))), SecretSource(value="ck-static")],
                      recheck=1.0, clock=clock)
    assert keys.check(b"Bearer ck-old") and keys.check(b"bearer ck-static")
    assert not keys.check(b"Bearer ck-new") and not keys.check(b"ck-old") and not keys.check(None)
    vol.update({"team-a": "ck-new\n"})
    clock.t = 1.0
    assert keys.check(b"Bearer ck-new")
    assert not keys.check(b"Bearer ck-old"), "a rotated-out key stops working"
    assert keys.check(b"Bearer ck-static")
    assert [c.file for c in keys.credentials] == [str(vol.path("team-a")), None]


def test_a_key_rewritten_in_place_is_taken_only_when_two_reads_agree(tmp_path):
    """Issue 13: a key file read mid-write (in place, same inode) must not become the key: a
    client key's prefix would be accepted and the real key refused."""
    path = tmp_path / "key"
    path.write_text("ck-old-key\n")
    clock = Tick()
    cred = Credential(SecretSource(file=str(path)), recheck=1.0, clock=clock)
    assert cred.get() == "ck-old-key"
    with open(path, "r+") as fh:          # the writer truncated and wrote half of the new key
        fh.truncate(0)
        fh.write("ck-n")
    os.utime(path, ns=(1, 1))
    clock.t = 1.0
    assert cred.get() == "ck-old-key", "a half-written key was taken"
    with open(path, "a") as fh:           # ... and finished
        fh.write("ew-key\n")
    os.utime(path, ns=(2, 2))
    clock.t = 2.0
    assert cred.get() == "ck-old-key", "taken on its first read"
    clock.t = 3.0
    assert cred.get() == "ck-new-key"
