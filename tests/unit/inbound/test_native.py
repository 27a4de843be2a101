"""inbound.native: the decoders that judge a provider's own stream without translating it
(first token, end, in-band failure, truncation, any split of the bytes), and the answer checks."""

from __future__ import annotations

import orjson
from hypothesis import given, settings, strategies as st

from detour_proxy.inbound import native as nat


def _sse(*docs: dict) -> bytes:
    return b"".join(b"event: " + d["type"].encode() + b"\ndata: " + orjson.dumps(d) + b"\n\n" for d in docs)


RESP = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
RESPONSES = _sse(
    {"type": "response.created", "sequence_number": 0, "response": RESP},
    {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
     "item": {"type": "message", "id": "msg_1", "content": []}},
    {"type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_1", "output_index": 0,
     "content_index": 0, "delta": "Hel"},
    {"type": "response.output_text.delta", "sequence_number": 3, "item_id": "msg_1", "output_index": 0,
     "content_index": 0, "delta": "lo"},
    {"type": "response.completed", "sequence_number": 4,
     "response": {**RESP, "status": "completed", "usage": {"input_tokens": 3, "output_tokens": 2}}})


def _feed(dec, data: bytes, cuts: list[int]):
    out, at = [], 0
    for c in sorted(set(cuts)):
        out += dec.feed(data[at:c])
        at = c
    out += dec.feed(data[at:])
    return out + dec.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, len(RESPONSES)), max_size=6))
def test_responses_events_any_split(cuts):
    dec = nat.ResponsesEvents("openai-x")
    evs = _feed(dec, RESPONSES, cuts)
    assert [e.kind for e in evs] == ["chunk"] * 5 + ["done"]
    assert [e.content_bearing for e in evs[:5]] == [False, False, True, True, True]
    assert "".join(e.text for e in evs) == "Hello"
    assert b"".join(e.payload for e in evs) == RESPONSES   # relayed byte for byte
    assert dec.last_seq == 4 and dec.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert dec.open_text == {"id": "msg_1", "index": 0, "parts": ["Hel", "lo"]} and dec.response == RESP
    assert nat.stored_by("resp_1") == "openai-x"


def test_responses_failed_event_is_a_failure_with_its_status():
    dec = nat.ResponsesEvents("p")
    evs = dec.feed(_sse({"type": "response.created", "sequence_number": 0, "response": RESP},
                        {"type": "response.failed", "sequence_number": 1,
                         "response": {**RESP, "status": "failed",
                                      "error": {"code": "rate_limit_exceeded", "message": "slow down"}}}))
    assert [e.kind for e in evs] == ["chunk", "error"]
    assert evs[1].error is not None and "slow down" in evs[1].error.message


def test_truncated_streams_are_failures():
    for dec, data in ((nat.ResponsesEvents("p"), RESPONSES[:RESPONSES.index(b"event: response.completed")]),
                      (nat.MessagesEvents("p"), _sse({"type": "message_start", "message": {"id": "m"}}))):
        evs = dec.feed(data) + dec.close()
        assert evs[-1].kind == "error" and evs[-1].error.code == "stream_truncated"


def test_messages_events():
    dec = nat.MessagesEvents("claude")
    evs = dec.feed(_sse(
        {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 7, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}},
        {"type": "message_stop"}))
    assert [e.kind for e in evs] == ["chunk"] * 9 + ["done"]
    assert [e.content_bearing for e in evs[:9]] == [False, False, False, True, False, False, True, False, True]
    assert "".join(e.text for e in evs) == "Hi"
    assert dec.usage == {"prompt_tokens": 7, "completion_tokens": 4}
    assert dec.blocks == 2 and dec.open == 1 and dec.open_type == "text"


def test_messages_error_event_keeps_anthropics_status():
    dec = nat.MessagesEvents("claude")
    evs = dec.feed(_sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    assert evs[0].kind == "error" and evs[0].error.status == 529


def test_answer_checks():
    assert nat.check_response({"object": "response", "id": "resp_2", "output": [],
                               "usage": {"input_tokens": 1, "output_tokens": 2}}, "p") == \
        (None, {"prompt_tokens": 1, "completion_tokens": 2})
    assert nat.check_response({"object": "chat.completion"}, "p")[0]
    assert nat.check_response({"object": "response", "output": [], "status": "failed",
                               "error": {"code": "server_error"}}, "p")[0]
    assert nat.check_message({"type": "message", "content": [], "usage": {"input_tokens": 1}}, "p")[0] is None
    assert nat.check_message({"type": "error", "error": {}}, "p")[0]


def test_remembered_ids_are_bounded():
    for i in range(nat._STORED_MAX + 5):
        nat.remember_response(f"resp_b{i}", "p")
    assert len(nat._stored) == nat._STORED_MAX and nat.stored_by("resp_b0") is None
    assert nat.stored_by(f"resp_b{nat._STORED_MAX + 4}") == "p"


def test_responses_urls():
    from detour_proxy.config import Provider
    oai = Provider(name="o", type="openai", baseURL="https://api.openai.com/v1/")
    assert nat._responses_url(oai) == "https://api.openai.com/v1/responses"
    old = Provider(name="a", type="azure-openai", baseURL="https://r.openai.azure.com/openai", apiVersion="2024-10-21")
    assert nat._responses_url(old) == "https://r.openai.azure.com/openai/responses?api-version=2025-04-01-preview"
    new = Provider(name="b", type="azure-openai", baseURL="https://r.openai.azure.com", apiVersion="2025-05-01-preview")
    assert nat._responses_url(new) == "https://r.openai.azure.com/openai/responses?api-version=2025-05-01-preview"
    assert nat.stored_url(new, "/resp_1/input_items", "limit=5") == \
        "https://r.openai.azure.com/openai/responses/resp_1/input_items?limit=5&api-version=2025-05-01-preview"
    assert nat.stored_url(oai, "/resp_1", "") == "https://api.openai.com/v1/responses/resp_1"
    ant = Provider(name="c", type="anthropic", baseURL="https://api.anthropic.com/v1")
    assert nat._messages_url(ant) == "https://api.anthropic.com/v1/messages"
