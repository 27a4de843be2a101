"""POST /v1/responses and POST /v1/messages through Detour, with the official SDKs as oracles:
each falls back across provider types (OpenAI-format target failing -> Anthropic target, and
Anthropic failing -> OpenAI), stream and not, tool calls whose arguments arrive in pieces."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from support import ProxyServer

CANONICAL = "The quick brown fox jumps over the lazy dog."
FN_TOOL = {"type": "function", "name": "search", "description": "Search the web",
           "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}
ANT_TOOL = {"name": "search", "description": "Search the web",
            "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}


def _config(primary, anthropic_sim, **route):
    return {
        "providers": [
            # a chat-completions-only OpenAI-format target: /v1/responses is translated for it
            # (native forwarding to openai/azure targets: test_inbound_native.py)
            {"name": "openai", "type": "openai-compatible", "baseURL": primary.v1,
             "apiKey": {"value": "sk-openai-SECRET"}},
            {"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url,
             "apiKey": {"value": "sk-ant-SECRET"}},
        ],
        "routes": [
            {"name": "gpt", "match": {"models": ["gpt-4o"]},
             "targets": [{"provider": "openai", "model": "gpt-4o"},
                         {"provider": "claude", "model": "claude-3-5-sonnet-latest", "priority": 1}],
             "retry": {"attempts": 1}, **route},
            {"name": "claude", "match": {"models": ["claude-sonnet-4"]},
             "targets": [{"provider": "claude", "model": "claude-sonnet-4"},
                         {"provider": "openai", "model": "gpt-4o", "priority": 1}],
             "retry": {"attempts": 1}, **route},
        ],
    }


@pytest.fixture()
def gw(primary, anthropic_sim):
    with ProxyServer(_config(primary, anthropic_sim)) as proxy:
        yield proxy, primary, anthropic_sim


def oai(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)


def ant(proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)


# -- /v1/responses ---------------------------------------------------------------------------

def test_responses_create_falls_back_from_openai_to_anthropic(gw):
    proxy, primary, claude = gw
    primary.faults(status=503)
    raw = oai(proxy).responses.with_raw_response.create(model="gpt-4o", instructions="Be brief.", input="hi")
    resp = raw.parse()
    assert raw.headers["x-detour-target"] == "claude/claude-3-5-sonnet-latest"
    assert raw.headers["x-detour-attempts"] == "2"
    assert resp.status == "completed" and resp.output_text == CANONICAL
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens > 0
    sent = claude.stats()["lastRequest"]["body"]
    assert sent["system"] == "Be brief." and sent["messages"][0]["role"] == "user"
    assert "client" not in json.dumps(claude.stats()["lastRequest"]["headers"])


def test_responses_stream_typed_events_across_fallback(gw):
    proxy, primary, claude = gw
    primary.faults(status=429)
    with oai(proxy).responses.stream(model="gpt-4o", input=[{"role": "user", "content": "hi"}]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == CANONICAL
    assert final.output_text == CANONICAL
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_tool_call_arguments_in_pieces_and_result_round_trip(gw):
    proxy, primary, claude = gw
    claude.faults(status=529)
    client = oai(proxy)
    # claude-sonnet-4 route: the Anthropic target is overloaded, the OpenAI target answers
    with client.responses.stream(model="claude-sonnet-4", input="find cats", tools=[FN_TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    arg_deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(arg_deltas) > 1
    call = final.output[0]
    assert call.type == "function_call" and call.name == "search"
    assert json.loads(call.arguments) == {"query": "find cats"}
    # the tool result goes back as function_call_output, translated for the next target
    resp = client.responses.create(model="claude-sonnet-4", tools=[FN_TOOL], input=[
        {"role": "user", "content": "find cats"},
        {"type": "function_call", "call_id": call.call_id, "name": "search", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "3 cats"}])
    assert resp.output_text == CANONICAL
    sent = primary.stats()["lastRequest"]["body"]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call.call_id and sent[-1] == {
        "role": "tool", "tool_call_id": call.call_id, "content": "3 cats"}


def test_responses_failure_after_first_event_is_response_failed(gw):
    proxy, primary, claude = gw
    primary.faults(cutAfterChunks=2)
    claude.faults(status=503)
    with oai(proxy).responses.stream(model="gpt-4o", input="hi") as stream:
        events = list(stream)
        with pytest.raises(RuntimeError):
            stream.get_final_response()
    types = [e.type for e in events]
    assert types[-1] == "response.failed" and "response.completed" not in types
    assert events[-1].response.status == "failed" and events[-1].response.error.message


def test_responses_stateful_features_are_refused_when_no_target_serves_them(gw):
    """No target of the route speaks the Responses API natively: a 400 that names why."""
    proxy, _, _ = gw
    client = oai(proxy)
    for extra in ({"previous_response_id": "resp_1"}, {"store": True}, {"background": True},
                  {"tools": [{"type": "web_search"}]}):
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model="gpt-4o", input="hi", **extra)
        assert info.value.code == "unsupported_by_route"
        assert "does not serve the Responses API natively" in info.value.message


# -- /v1/messages ----------------------------------------------------------------------------

def test_messages_create_falls_back_from_anthropic_to_openai(gw):
    proxy, primary, claude = gw
    claude.faults(status=529)
    raw = ant(proxy).messages.with_raw_response.create(
        model="claude-sonnet-4", max_tokens=100, system="Be brief.", stop_sequences=["END"],
        messages=[{"role": "user", "content": "hi"}])
    msg = raw.parse()
    assert raw.headers["x-detour-target"] == "openai/gpt-4o"
    assert msg.content[0].text == CANONICAL and msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens > 0
    sent = primary.stats()["lastRequest"]
    assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["body"]["stop"] == ["END"]
    assert "client-key" not in json.dumps(sent)   # the client's key is never forwarded


def test_messages_stream_tool_use_with_helpers(gw):
    proxy, primary, claude = gw
    claude.faults(status=503)
    with ant(proxy).messages.stream(model="claude-sonnet-4", max_tokens=100, tools=[ANT_TOOL],
                                    tool_choice={"type": "any"},
                                    messages=[{"role": "user", "content": "find cats"}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    pieces = [e for e in events if e.type == "input_json"]
    assert len(pieces) > 1
    block = final.content[0]
    assert block.type == "tool_use" and block.name == "search" and block.input == {"query": "find cats"}
    assert final.stop_reason == "tool_use"
    assert primary.stats()["lastRequest"]["body"]["tool_choice"] == "required"


def test_messages_stream_text_and_tool_result_round_trip(gw):
    proxy, primary, claude = gw
    with ant(proxy).messages.stream(model="gpt-4o", max_tokens=100, messages=[
            {"role": "user", "content": "find cats"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "search",
                                               "input": {"query": "cats"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "3 cats"}]}],
            tools=[ANT_TOOL]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == CANONICAL == final.content[0].text
    sent = primary.stats()["lastRequest"]["body"]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "toolu_1", "content": "3 cats"}


def test_messages_mid_stream_failure_is_an_error_event(gw):
    proxy, primary, claude = gw
    claude.faults(cutAfterChunks=2)
    primary.faults(status=503)
    with pytest.raises(anthropic.APIStatusError):
        with ant(proxy).messages.stream(model="claude-sonnet-4", max_tokens=100,
                                        messages=[{"role": "user", "content": "hi"}]) as stream:
            for _ in stream:
                pass


def test_messages_errors_use_anthropic_format_and_statuses(gw):
    proxy, primary, claude = gw
    claude.faults(status=529)
    primary.faults(status=503)
    with pytest.raises(anthropic.APIStatusError) as info:
        ant(proxy).messages.create(model="claude-sonnet-4", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 529
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.NotFoundError) as nf:
        ant(proxy).messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert nf.value.body["error"]["type"] == "not_found_error"
    r = httpx.post(proxy.url + "/v1/messages", json={"model": "gpt-4o", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_client_keys_are_checked_on_both_endpoints_and_never_forwarded(primary, anthropic_sim):
    cfg = _config(primary, anthropic_sim)
    cfg["clientAuth"] = {"keys": [{"value": "client-key-1"}]}
    with ProxyServer(cfg) as proxy:
        good = anthropic.Anthropic(base_url=proxy.url, api_key="client-key-1", max_retries=0)
        msg = good.messages.create(model="claude-sonnet-4", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert msg.content[0].text == CANONICAL
        sent = anthropic_sim.stats()["lastRequest"]["headers"]
        assert sent["x-api-key"] == "<redacted>" and "client-key-1" not in json.dumps(sent)
        with pytest.raises(anthropic.AuthenticationError) as info:
            anthropic.Anthropic(base_url=proxy.url, api_key="wrong", max_retries=0).messages.create(
                model="claude-sonnet-4", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert info.value.body["error"]["type"] == "authentication_error"
        assert openai.OpenAI(base_url=proxy.v1, api_key="client-key-1", max_retries=0).responses.create(
            model="gpt-4o", input="hi").output_text == CANONICAL
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proxy.v1, api_key="wrong", max_retries=0).responses.create(model="gpt-4o", input="hi")


def test_responses_json_schema_and_max_output_tokens_reach_the_target(gw):
    proxy, primary, _ = gw
    fmt = {"type": "json_schema", "name": "out", "schema": {"type": "object", "properties": {}}, "strict": True}
    resp = oai(proxy).responses.create(model="gpt-4o", input="hi", text={"format": fmt}, max_output_tokens=3)
    body = primary.stats()["lastRequest"]["body"]
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "out", "schema": {"type": "object", "properties": {}}, "strict": True}}
    assert body["max_completion_tokens"] == 3
    # the sim stops at 3 output tokens: an incomplete response, said so
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"


def test_messages_base64_image_is_translated_for_an_openai_target(gw):
    proxy, primary, claude = gw
    claude.faults(status=500)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    ant(proxy).messages.create(model="claude-sonnet-4", max_tokens=10, messages=[
        {"role": "user", "content": [image, {"type": "text", "text": "what is it?"}]}])
    sent = primary.stats()["lastRequest"]["body"]["messages"][0]["content"]
    assert sent[0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def test_count_tokens_is_answered_by_an_anthropic_target(gw):
    proxy, primary, claude = gw
    client = ant(proxy)
    raw = client.messages.with_raw_response.count_tokens(
        model="claude-sonnet-4", system="Be brief please.", messages=[{"role": "user", "content": "count these four words"}])
    assert raw.parse().input_tokens == 7 and raw.headers["x-detour-target"] == "claude/claude-sonnet-4"
    sent = claude.stats()["lastRequest"]
    assert sent["path"] == "/v1/messages/count_tokens" and "client-key" not in json.dumps(sent)
    # the gpt-4o route's Anthropic target counts too (with its own model name)
    assert client.messages.count_tokens(model="gpt-4o", messages=[{"role": "user", "content": "a b"}]).input_tokens == 2
    assert claude.stats()["lastRequest"]["body"]["model"] == "claude-3-5-sonnet-latest"
    # an overloaded Anthropic target: 529, in Anthropic's format (no other provider counts for it)
    claude.faults(status=529)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.count_tokens(model="claude-sonnet-4", messages=[{"role": "user", "content": "a"}])
    assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"
    assert primary.stats()["total"] == 0


def test_count_tokens_without_an_anthropic_target_says_why(primary, anthropic_sim):
    cfg = _config(primary, anthropic_sim)
    cfg["routes"][0]["targets"] = [{"provider": "openai", "model": "gpt-4o"}]
    with ProxyServer(cfg) as proxy:
        with pytest.raises(anthropic.BadRequestError) as info:
            ant(proxy).messages.count_tokens(model="gpt-4o", messages=[{"role": "user", "content": "a"}])
        assert "count tokens" in info.value.body["error"]["message"]


def test_hedging_metrics_and_headers_apply_to_both_endpoints(primary, anthropic_sim):
    """A slow first target is hedged (non-stream) on both endpoints, the hedge of the other
    provider type wins; requests and hedges are counted per route."""
    primary.faults(latency=1.0)
    cfg = _config(primary, anthropic_sim, hedge={"after": "100ms"})
    with ProxyServer(cfg) as proxy:
        raw = oai(proxy).responses.with_raw_response.create(model="gpt-4o", input="hi")
        assert raw.parse().output_text == CANONICAL
        assert raw.headers["x-detour-target"] == "claude/claude-3-5-sonnet-latest"   # the hedge won
        primary.clear()
        anthropic_sim.faults(latency=1.0)
        raw = ant(proxy).messages.with_raw_response.create(model="claude-sonnet-4", max_tokens=10,
                                                           messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().content[0].text == CANONICAL
        assert raw.headers["x-detour-target"] == "openai/gpt-4o"   # the hedge won
        metrics = httpx.get(proxy.url + "/metrics").text
    for route in ("gpt", "claude"):
        assert f'detour_hedges_total{{route="{route}"}} 1.0' in metrics
        assert f'detour_requests_total{{outcome="success",route="{route}"}} 1.0' in metrics


def test_anthropic_beta_goes_to_anthropic_targets_only(gw):
    proxy, primary, claude = gw
    client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0,
                                 default_headers={"anthropic-beta": "tools-2024-04-04"})
    client.messages.create(model="claude-sonnet-4", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert claude.stats()["lastRequest"]["headers"]["anthropic-beta"] == "tools-2024-04-04"
    client.messages.count_tokens(model="claude-sonnet-4", messages=[{"role": "user", "content": "hi"}])
    assert claude.stats()["lastRequest"]["headers"]["anthropic-beta"] == "tools-2024-04-04"
    claude.faults(status=529)
    client.messages.create(model="claude-sonnet-4", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert primary.stats()["total"] == 1 and "anthropic-beta" not in primary.stats()["lastRequest"]["headers"]
