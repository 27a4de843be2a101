"""A watched file is taken only once two reads agree: torn in-place writes are never installed.

A tool that rewrites a file in place (`open(..., "w")`, `cp`, `>` redirection, most editors'
default) truncates it and writes it in pieces; a poll that lands between two pieces reads a
prefix. A prefix of YAML often still parses: a config cut after its first route (the other
routes' models answer 404) or before `clientAuth` (requests without a key are served). So a
change seen by a poll is only a *candidate*: it is taken when the next read finds the same
content under the same file identity (inode, mtime, size). A file renamed into place (editors'
safe write, `write_atomic`) or a Kubernetes volume update (the `..data` symlink swapped to a
complete new directory) arrives whole in one rename: a change that comes with a new inode or a
new `..data` target is complete the first time it is seen.

`Settle` is the pure rule (no I/O): the callers read, it decides.
"""

from __future__ import annotations

from typing import Generic, Hashable, TypeVar

T = TypeVar("T")


class Settle(Generic[T]):
    """Remembers the last candidate; `observe` returns a value once it was seen twice in a row."""

    __slots__ = ("_candidate",)

    def __init__(self) -> None:
        self._candidate: tuple[Hashable, T] | None = None

    def observe(self, stamp: Hashable, value: T, *, complete: bool = False) -> T | None:
        """`stamp` identifies the read (file identity plus a content hash); `complete` says the
        writer is known to be done (an atomic swap). Returns `value` when it can be taken."""
        if complete or (self._candidate is not None and self._candidate[0] == stamp):
            self._candidate = None
            return value
        self._candidate = (stamp, value)
        return None

    @property
    def pending(self) -> bool:
        """A candidate waits for its confirming read."""
        return self._candidate is not None

    def reset(self) -> None:
        self._candidate = None
