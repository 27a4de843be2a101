"""The torn-write rule (issue 13): a changed file is taken only when two reads agree."""

from detour_proxy.config.stable import Settle


def test_a_value_is_taken_on_its_second_identical_read():
    s: Settle[str] = Settle()
    assert s.observe(("ino", 1, "h1"), "half") is None and s.pending
    assert s.observe(("ino", 2, "h2"), "whole") is None          # still being written
    assert s.observe(("ino", 2, "h2"), "whole") == "whole" and not s.pending


def test_the_same_content_under_a_new_mtime_is_a_new_write():
    s: Settle[str] = Settle()
    s.observe(("ino", 1, "h"), "torn")
    assert s.observe(("ino", 2, "h"), "torn") is None   # rewritten torn again: not stable


def test_an_atomic_swap_is_taken_at_once():
    s: Settle[str] = Settle()
    s.observe(("ino", 1, "h"), "torn")
    assert s.observe(("ino2", 5, "k"), "swapped", complete=True) == "swapped" and not s.pending
