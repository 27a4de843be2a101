"""The canonical reply, continuation, token estimates and deterministic embeddings.

Every sim answers the same text so that tests can assert on *what* a client received no
matter which upstream (or how many, after a failover) produced it. The reply is split once,
at start-up, into chunks on word boundaries (leading whitespace stays with its word, like
real tokenizers do), and the byte encodings of those chunks are cached per flavour, so the
per-request cost of answering is a few dict look-ups.

Continuation: when a request ends with an assistant message whose text is a prefix of the
canonical reply, the sim answers only the remainder. If the prefix ends inside a chunk the
first piece of the answer is the rest of that chunk, and the following pieces are the
canonical chunks, so a stitched stream is byte-identical to the canonical reply.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import re
import struct
from functools import lru_cache
from itertools import accumulate
from typing import Any

DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog."
DEFAULT_CHUNKS = 8
DEFAULT_EMBEDDING_DIMS = 64

_WORD = re.compile(r"\s*\S+")


def split_text(text: str, n: int) -> tuple[str, ...]:
    """Split ``text`` into ``n`` non-empty pieces whose concatenation is ``text``.

    Word boundaries are preferred (words are distributed as evenly as possible); if more
    pieces than words are requested the text is split evenly by characters instead.
    """
    if not text:
        return ()
    n = max(1, int(n))
    words = _WORD.findall(text)
    tail = text[sum(map(len, words)):]
    if words and tail:
        words[-1] += tail
    if not words:
        words = [text]
    if n <= len(words):
        q, r = divmod(len(words), n)
        out, i = [], 0
        for k in range(n):
            size = q + (1 if k < r else 0)
            out.append("".join(words[i : i + size]))
            i += size
        return tuple(out)
    n = min(n, len(text))
    size = len(text)
    return tuple(text[k * size // n : (k + 1) * size // n] for k in range(n))


class Canon:
    """The canonical reply of one sim, pre-split into chunks."""

    __slots__ = ("text", "chunks", "_ends")

    def __init__(self, text: str = DEFAULT_REPLY, chunks: int = DEFAULT_CHUNKS) -> None:
        self.text = text
        self.chunks = split_text(text, chunks)
        self._ends = list(accumulate(len(c) for c in self.chunks))

    def remainder(self, prefix: str | None) -> tuple[str, ...]:
        """Pieces still to send after ``prefix``; the whole reply if it is not a prefix."""
        if not prefix or not self.text.startswith(prefix):
            return self.chunks
        k = len(prefix)
        i = bisect.bisect_right(self._ends, k)
        if i >= len(self.chunks):
            return ()
        start = self._ends[i - 1] if i else 0
        if start == k:
            return self.chunks[i:]
        return (self.text[k : self._ends[i]],) + self.chunks[i + 1 :]


def content_text(content: Any) -> str:
    """Plain text of an OpenAI/Anthropic message ``content`` (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                t = part.get("text")
                if isinstance(t, str):
                    parts.append(t)
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return ""


def estimate_tokens(messages: Any, extra: Any = None) -> int:
    """Cheap, deterministic prompt-token estimate (~4 characters per token)."""
    chars = len(content_text(extra)) if extra is not None else 0
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                chars += len(content_text(m.get("content")))
    return max(1, (chars + 3) // 4)


def text_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


@lru_cache(maxsize=4096)
def _vector(key: str, dims: int) -> tuple[float, ...]:
    raw = hashlib.shake_256(key.encode("utf-8", "surrogatepass")).digest(4 * dims)
    ints = struct.unpack(f"<{dims}I", raw)
    vec = [(i / 2147483647.5) - 1.0 for i in ints]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return tuple(v / norm for v in vec)


@lru_cache(maxsize=4096)
def _vector_b64(key: str, dims: int) -> str:
    vec = _vector(key, dims)
    return base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode("ascii")


def embedding(item: Any, dims: int, as_base64: bool = False) -> list[float] | str:
    """Unit vector of ``dims`` floats derived from a hash of ``item`` (text or token ids)."""
    key = item if isinstance(item, str) else repr(item)
    return _vector_b64(key, dims) if as_base64 else list(_vector(key, dims))
