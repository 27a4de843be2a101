"""The SSE splitter: the same events whatever the read boundaries and line endings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from detour_proxy.adapters import OpenAIStreamDecoder, SSEEvent, SSEParser
from detour_proxy.adapters.base import MAX_SSE_EVENT_BYTES, SSEEventTooLarge


def parse_all(chunks: list[bytes]) -> list[SSEEvent]:
    p = SSEParser()
    out = []
    for c in chunks:
        out += p.feed(c)
    return out + p.close()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    parts, prev = [], 0
    for p in points:
        parts.append(data[prev:p])
        prev = p
    parts.append(data[prev:])
    return parts


def test_basic_fields():
    wire = (b": comment\n\nevent: message_start\ndata: {\"a\":1}\n\n"
            b"data: line1\ndata: line2\nid: 7\nretry: 10\n\n"
            b"data:nospace\n\nevent: only-event\n\n")
    assert parse_all([wire]) == [SSEEvent("message_start", b'{"a":1}'), SSEEvent(None, b"line1\nline2"),
                                 SSEEvent(None, b"nospace")]


def test_cr_at_read_boundary_is_not_two_line_ends():
    # "\r" | "\n" must be one line end: otherwise "x" would be dispatched on its own
    assert parse_all([b"data: x\r", b"\ndata: y\r\n\r\n"]) == [SSEEvent(None, b"x\ny")]
    assert parse_all([b"data: x\r", b"\r"]) == [SSEEvent(None, b"x")]  # bare CR line ends too


def test_unterminated_event_flushed_on_close():
    p = SSEParser()
    assert p.feed(b"data: [DONE]") == []
    assert p.close() == [SSEEvent(None, b"[DONE]")]


def test_a_line_that_never_ends_is_refused_at_the_bound():
    p = SSEParser(max_event_bytes=1000)
    p.feed(b"data: ")
    with pytest.raises(SSEEventTooLarge):
        for _ in range(100):          # 100 x 64 bytes: would be 6.4 kB held without the bound
            p.feed(b"x" * 64)
    assert len(p._buf) == 0           # noqa: SLF001 - what it held is let go


def test_an_event_whose_data_lines_never_end_is_refused_at_the_bound():
    p = SSEParser(max_event_bytes=1000)
    with pytest.raises(SSEEventTooLarge):
        for _ in range(100):          # complete lines, but no blank line ever dispatches them
            p.feed(b"data: " + b"x" * 50 + b"\n")


def test_events_up_to_the_bound_pass_and_the_bound_is_per_event():
    p = SSEParser(max_event_bytes=1000)
    big = b"x" * 1000
    for _ in range(5):                # 5 kB in all, each event exactly at the bound
        assert p.feed(b"data: " + big[:500] + b"\ndata: " + big[500:] + b"\n\n") == \
            [SSEEvent(None, big[:500] + b"\n" + big[500:])]


def test_default_bound_is_one_mib_and_decoders_pass_the_refusal_on():
    assert MAX_SSE_EVENT_BYTES == 1 << 20
    assert SSEParser().feed(b"data: " + b"x" * (1 << 20) + b"\n\n")[0].data == b"x" * (1 << 20)
    with pytest.raises(SSEEventTooLarge):
        OpenAIStreamDecoder().feed(b"data: " + b"x" * ((1 << 20) + 1))


events_st = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from(["message_start", "content_block_delta", "error", "ping"])),
        st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=30)
                 .filter(lambda s: not s.startswith(" ")), min_size=1, max_size=3),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(events=events_st, eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
       cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20), comments=st.booleans())
def test_any_split_points_give_the_same_events(events, eol, cuts, comments):
    wire = b""
    for name, lines in events:
        if comments:
            wire += b": keep-alive" + eol
        if name:
            wire += b"event: " + name.encode() + eol
        for line in lines:
            wire += b"data: " + line.encode() + eol
        wire += eol
    expected = [SSEEvent(name, "\n".join(lines).encode()) for name, lines in events]
    assert parse_all([wire]) == expected
    assert parse_all(split(wire, cuts)) == expected
    assert parse_all([wire[i:i + 1] for i in range(len(wire))]) == expected
