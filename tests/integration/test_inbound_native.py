"""Native forwarding (issue 15): /v1/responses goes to OpenAI/Azure targets as the Responses
API and /v1/messages to Anthropic targets as the Messages API, as sent (only `model`
replaced); stateful and server-side features reach only targets that can serve them, the
others are skipped with a reason; fallback across provider types still works, stream and not,
and a native stream cut mid-way is continued by a translated target as one consistent
event sequence. Official SDKs are the oracles."""

from __future__ import annotations

import anthropic
import openai
import pytest

from support import ProxyServer

CANONICAL = "The quick brown fox jumps over the lazy dog."
ANT_TOOL = {"name": "search", "description": "Search the web",
            "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}


def _config(primary, secondary, azure, claude, **route):
    return {
        "providers": [
            {"name": "openai", "type": "openai", "baseURL": primary.v1, "apiKey": {"value": "sk-openai-SECRET"}},
            {"name": "openai2", "type": "openai", "baseURL": secondary.v1, "apiKey": {"value": "sk-openai2-SECRET"}},
            {"name": "az", "type": "azure-openai", "baseURL": azure.url, "apiKey": {"value": "az-SECRET"}},
            {"name": "claude", "type": "anthropic", "baseURL": claude.url, "apiKey": {"value": "sk-ant-SECRET"},
             "continuation": "prefill"},
        ],
        "routes": [
            {"name": "gpt", "match": {"models": ["gpt-4o"]},
             "targets": [{"provider": "openai", "model": "gpt-4o"},
                         {"provider": "openai2", "model": "gpt-4o-2", "priority": 1},
                         {"provider": "claude", "model": "claude-3-5-sonnet-latest", "priority": 2}],
             "retry": {"attempts": 1}, **route},
            {"name": "gpt-then-claude", "match": {"models": ["gpt-x"]},
             "targets": [{"provider": "openai", "model": "gpt-4o"},
                         {"provider": "claude", "model": "claude-3-5-sonnet-latest", "priority": 1}],
             "retry": {"attempts": 1}, **route},
            {"name": "azure", "match": {"models": ["az"]},
             "targets": [{"provider": "az", "model": "my-deployment"}], "retry": {"attempts": 1}},
            {"name": "claude", "match": {"models": ["claude-sonnet-4"]},
             "targets": [{"provider": "claude", "model": "claude-sonnet-4"},
                         {"provider": "openai", "model": "gpt-4o", "priority": 1}],
             "retry": {"attempts": 1}, **route},
        ],
    }


@pytest.fixture()
def gw(primary, secondary, azure, anthropic_sim):
    with ProxyServer(_config(primary, secondary, azure, anthropic_sim)) as proxy:
        yield proxy, primary, secondary, anthropic_sim


def oai(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)


def ant(proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)


# -- /v1/responses, native -------------------------------------------------------------------

def test_responses_go_to_openai_as_the_responses_api_unchanged(gw):
    proxy, primary, _, _ = gw
    raw = oai(proxy).responses.with_raw_response.create(
        model="gpt-4o", input="hi", truncation="auto", include=["reasoning.encrypted_content"], store=False)
    resp = raw.parse()
    assert raw.headers["x-detour-target"] == "openai/gpt-4o"
    assert resp.output_text == CANONICAL and resp.id.startswith("resp_primary_")   # the provider's own id
    last = primary.stats()["lastRequest"]
    assert last["path"] == "/v1/responses"
    assert last["body"]["truncation"] == "auto" and last["body"]["include"] == ["reasoning.encrypted_content"]
    assert last["body"]["store"] is False and "messages" not in last["body"]


def test_responses_go_to_azure_on_its_responses_path(gw, azure):
    proxy = gw[0]
    resp = oai(proxy).responses.create(model="az", input="hi")
    assert resp.output_text == CANONICAL
    last = azure.stats()["lastRequest"]
    assert last["path"] == "/openai/responses" and last["body"]["model"] == "my-deployment"
    assert last["headers"].get("api-key") == "***" or "api-key" in {k.lower() for k in last["headers"]}


def test_previous_response_id_is_pinned_to_the_provider_that_stored_it(gw):
    proxy, primary, secondary, claude = gw
    client = oai(proxy)
    first = client.responses.create(model="gpt-4o", input="remember 42")
    follow = client.responses.with_raw_response.create(model="gpt-4o", input="what was it?",
                                                       previous_response_id=first.id)
    assert follow.parse().previous_response_id == first.id
    assert follow.headers["x-detour-target"] == "openai/gpt-4o"
    with client.responses.stream(model="gpt-4o", input="and now?", previous_response_id=follow.parse().id) as s:
        streamed = s.get_final_response()
    assert streamed.previous_response_id == follow.parse().id and streamed.output_text == CANONICAL
    # the owner fails: the other OpenAI provider and the Anthropic target cannot serve it
    primary.faults(status=503)
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.create(model="gpt-4o", input="again?", previous_response_id=first.id)
    skipped = info.value.response.headers["x-detour-skipped"]
    assert "openai2/gpt-4o-2" in skipped and "claude/claude-3-5-sonnet-latest" in skipped
    assert secondary.requests("/v1/responses") == 0 and claude.requests("/v1/messages") == 0


def test_unknown_previous_response_id_gets_openais_refusal(gw):
    proxy, primary, _, claude = gw
    with pytest.raises(openai.BadRequestError) as info:
        oai(proxy).responses.create(model="gpt-x", input="hi", previous_response_id="resp_nowhere")
    assert info.value.code == "previous_response_not_found" and "resp_nowhere" in info.value.message
    assert claude.requests("/v1/messages") == 0   # never translated: Anthropic cannot serve it


def test_an_id_detour_never_saw_is_looked_for_on_each_native_target(gw):
    """Stored by the second OpenAI provider behind Detour's back (another replica, a restart):
    the first refuses it (`previous_response_not_found`, not held against it), the second serves."""
    proxy, primary, secondary, claude = gw
    elsewhere = openai.OpenAI(base_url=secondary.v1, api_key="k").responses.create(model="gpt-4o-2", input="42")
    raw = oai(proxy).responses.with_raw_response.create(model="gpt-4o", input="what was it?",
                                                       previous_response_id=elsewhere.id)
    assert raw.headers["x-detour-target"] == "openai2/gpt-4o-2" and raw.headers["x-detour-attempts"] == "2"
    assert raw.parse().previous_response_id == elsewhere.id
    assert primary.requests("/v1/responses") == 1 and claude.requests("/v1/messages") == 0


def test_server_side_web_search_runs_natively_and_skips_translated_targets(gw):
    proxy, primary, _, claude = gw
    client = oai(proxy)
    raw = client.responses.with_raw_response.create(model="gpt-x", input="news?", tools=[{"type": "web_search"}])
    resp = raw.parse()
    assert [o.type for o in resp.output] == ["web_search_call", "message"] and resp.output_text == CANONICAL
    with client.responses.stream(model="gpt-x", input="news?", tools=[{"type": "web_search"}]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [o.type for o in final.output] == ["web_search_call", "message"] and final.output_text == CANONICAL
    assert [e.sequence_number for e in events] == list(range(len(events)))
    primary.faults(status=503)   # the only target that can run the tool fails: honest 503, named
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.create(model="gpt-x", input="news?", tools=[{"type": "web_search"}])
    assert info.value.response.headers["x-detour-skipped"] == "claude/claude-3-5-sonnet-latest"
    assert "server-side tool" in info.value.message
    assert claude.requests("/v1/messages") == 0


def test_native_stream_falls_back_to_a_translated_target_before_the_first_token(gw):
    proxy, primary, _, claude = gw
    primary.faults(cutAfterChunks=0)     # the OpenAI stream breaks before any delta
    with oai(proxy).responses.stream(model="gpt-x", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == CANONICAL and claude.requests("/v1/messages") == 1
    assert [e.type for e in events].count("response.created") == 1
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_native_stream_cut_is_continued_by_anthropic_as_one_event_sequence(primary, secondary, azure,
                                                                            anthropic_sim):
    with ProxyServer(_config(primary, secondary, azure, anthropic_sim, streamFailover="continue")) as proxy:
        primary.faults(cutAfterChunks=3)
        with oai(proxy).responses.stream(model="gpt-x", input="hi") as stream:
            events = list(stream)
            final = stream.get_final_response()
    assert final.output_text == CANONICAL and final.status == "completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types.count("response.created") == 1 and types[-1] == "response.completed"
    assert "response.failed" not in types
    ids = {e.item_id for e in events if e.type == "response.output_text.delta"}
    assert len(ids) == 1 and {e.output_index for e in events if hasattr(e, "output_index")} == {0}
    assert final.id.startswith("resp_primary_")   # the response the client was told about
    assert anthropic_sim.requests("/v1/messages") == 1


def test_native_stream_failure_after_first_token_is_response_failed(gw):
    proxy, primary, secondary, claude = gw
    primary.faults(cutAfterChunks=2)
    with oai(proxy).responses.stream(model="gpt-4o", input="hi") as stream:
        events = list(stream)
        with pytest.raises(RuntimeError):
            stream.get_final_response()
    types = [e.type for e in events]
    assert types[-1] == "response.failed" and "response.completed" not in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.id.startswith("resp_primary_") and events[-1].response.error.message


# -- /v1/messages, native --------------------------------------------------------------------

THINK = {"type": "enabled", "budget_tokens": 1024}
SYSTEM = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]


def test_messages_go_to_anthropic_as_sent_thinking_and_cache_control_included(gw):
    proxy, _, _, claude = gw
    raw = ant(proxy).messages.with_raw_response.create(
        model="claude-sonnet-4", max_tokens=2000, system=SYSTEM, thinking=THINK, extra_body={"top_k": 5},
        metadata={"user_id": "u1"}, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    msg = raw.parse()
    assert raw.headers["x-detour-target"] == "claude/claude-sonnet-4"
    assert [b.type for b in msg.content] == ["thinking", "text"] and msg.content[0].signature == "sig-sim"
    assert msg.content[1].text == CANONICAL and msg.usage.cache_creation_input_tokens > 0
    last = claude.stats()["lastRequest"]
    assert last["body"]["thinking"] == THINK and last["body"]["top_k"] == 5 and last["body"]["system"] == SYSTEM
    assert last["body"]["metadata"] == {"user_id": "u1"} and last["body"]["model"] == "claude-sonnet-4"
    assert last["headers"].get("anthropic-beta") == "interleaved-thinking-2025-05-14"


def test_messages_stream_is_relayed_event_for_event(gw):
    proxy, _, _, _ = gw
    with ant(proxy).messages.stream(model="claude-sonnet-4", max_tokens=2000, system=SYSTEM, thinking=THINK,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
        kinds = [e.type for e in stream]
        msg = stream.get_final_message()
    assert [b.type for b in msg.content] == ["thinking", "text"] and msg.content[1].text == CANONICAL
    assert msg.content[0].signature == "sig-sim" and msg.usage.cache_creation_input_tokens > 0
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "thinking" in kinds


def test_messages_fall_back_to_openai_translated_stream_and_not(gw):
    proxy, primary, _, claude = gw
    claude.faults(status=529)
    msg = ant(proxy).messages.create(model="claude-sonnet-4", max_tokens=100, thinking=THINK,
                                     messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == CANONICAL   # thinking is dropped for the OpenAI target
    assert primary.stats()["lastRequest"]["path"] == "/v1/chat/completions"
    with ant(proxy).messages.stream(model="claude-sonnet-4", max_tokens=100, tools=[ANT_TOOL],
                                    messages=[{"role": "user", "content": "find cats"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == {"query": "find cats"}


def test_messages_server_tool_only_goes_to_anthropic(gw):
    proxy, primary, _, claude = gw
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
    raw = ant(proxy).messages.with_raw_response.create(model="claude-sonnet-4", max_tokens=100, tools=[tool],
                                                       messages=[{"role": "user", "content": "news?"}])
    assert raw.headers["x-detour-target"] == "claude/claude-sonnet-4"
    assert claude.stats()["lastRequest"]["body"]["tools"] == [tool]
    claude.faults(status=529)
    with pytest.raises(anthropic.APIStatusError) as info:
        ant(proxy).messages.create(model="claude-sonnet-4", max_tokens=100, tools=[tool],
                                   messages=[{"role": "user", "content": "news?"}])
    assert info.value.status_code == 529
    assert info.value.response.headers["x-detour-skipped"] == "openai/gpt-4o"
    assert primary.requests() == 0


def test_native_rows_are_tested():
    import re
    from pathlib import Path
    doc = (Path(__file__).parents[2] / "docs" / "inbound.md").read_text()
    named = re.findall(r"^\| nat-[a-z-]+ \| .* \| (test_[a-z0-9_]+) \|$", doc, re.M)
    assert len(named) == 16 and all(callable(globals().get(n)) for n in named)


def test_native_messages_stream_cut_is_continued_by_openai_as_one_message(primary, secondary, azure,
                                                                         anthropic_sim):
    cfg = _config(primary, secondary, azure, anthropic_sim, streamFailover="continue")
    cfg["providers"][0]["continuation"] = "prefill"   # the OpenAI-format sim continues a trailing assistant turn
    with ProxyServer(cfg) as proxy:
        anthropic_sim.faults(cutAfterChunks=3)
        with ant(proxy).messages.stream(model="claude-sonnet-4", max_tokens=100,
                                        messages=[{"role": "user", "content": "hi"}]) as stream:
            events = list(stream)
            msg = stream.get_final_message()
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == CANONICAL
    assert msg.id.startswith("msg_anthropic_") and msg.stop_reason == "end_turn"
    types = [e.type for e in events]
    assert types.count("message_start") == 1 and types[-1] == "message_stop"
    assert {e.index for e in events if e.type in ("content_block_start", "content_block_delta")} == {0}
    sent = primary.stats()["lastRequest"]["body"]["messages"]
    assert sent[-1]["role"] == "assistant" and CANONICAL.startswith(sent[-1]["content"])


def test_responses_api_setting(primary, anthropic_sim):
    """`responsesAPI` opts an openai-compatible server in (or an OpenAI provider out); it
    applies only to OpenAI-format providers."""
    from detour_proxy.config import Provider
    assert Provider(name="a", type="openai", baseURL="http://x").serves_responses
    assert Provider(name="a", type="azure-openai", baseURL="http://x").serves_responses
    assert not Provider(name="a", type="openai-compatible", baseURL="http://x").serves_responses
    assert not Provider(name="a", type="openai", baseURL="http://x", responsesAPI=False).serves_responses
    with pytest.raises(ValueError, match="responsesAPI applies"):
        Provider(name="a", type="anthropic", baseURL="http://x", responsesAPI=True)
    cfg = {"providers": [{"name": "vllm", "type": "openai-compatible", "baseURL": primary.v1, "responsesAPI": True}],
           "routes": [{"name": "r", "match": {"models": ["m"]}, "targets": [{"provider": "vllm", "model": "m"}]}]}
    with ProxyServer(cfg) as proxy:
        resp = oai(proxy).responses.create(model="m", input="hi", store=True)
    assert resp.id.startswith("resp_primary_") and primary.stats()["lastRequest"]["path"] == "/v1/responses"


def test_native_inband_failure_before_the_first_token_falls_back(gw):
    proxy, primary, _, claude = gw
    primary.faults(inbandError={"afterChunks": 0, "type": "server_error", "message": "boom"})
    with oai(proxy).responses.stream(model="gpt-x", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == CANONICAL and claude.requests("/v1/messages") == 1
    assert "response.failed" not in [e.type for e in events]
    with ant(proxy).messages.stream(model="claude-sonnet-4", max_tokens=50,
                                    messages=[{"role": "user", "content": "hi"}]) as s:
        assert s.get_final_message().content[0].text == CANONICAL   # Anthropic native, healthy


def test_stored_responses_are_retrieved_and_deleted_at_their_provider(gw):
    """GET/DELETE /v1/responses/{id} go to the provider that stored the response (remembered,
    or looked for on each Responses provider), with the provider's key, never the client's."""
    proxy, primary, secondary, _ = gw
    client = oai(proxy)
    made = client.responses.create(model="gpt-4o", input="hi", background=True)
    got = client.responses.with_raw_response.retrieve(made.id)
    assert got.parse().id == made.id and got.parse().output_text == CANONICAL
    assert got.headers["x-detour-provider"] == "openai"
    last = primary.stats()["lastRequest"]
    assert last["method"] == "GET" and last["path"] == f"/v1/responses/{made.id}" and last["authSent"]
    elsewhere = openai.OpenAI(base_url=secondary.v1, api_key="k").responses.create(model="m", input="x")
    assert client.responses.retrieve(elsewhere.id).id == elsewhere.id   # found on the second provider
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nowhere")
