"""`bedrock` providers through Detour on real loopback HTTP (issue 16): the official OpenAI and
Anthropic SDKs as clients, the simulator's Bedrock flavour as the upstream, which recomputes
every request's SigV4 signature with the test credentials (so signing is proven, and a wrong
secret gets Bedrock's 403), speaks Converse and the binary ConverseStream event stream, and
injects Bedrock's faults."""

from __future__ import annotations

import base64
import json

import anthropic
import httpx
import openai
import pytest

from detour_sim.bedrock_api import ACCESS_KEY, API_KEY, SECRET_KEY
from support import ProxyServer

CANONICAL = "The quick brown fox jumps over the lazy dog."
MODEL = "anthropic.claude-sonnet-4-5-v1:0"
CONVERSE = f"/model/{MODEL.replace(':', '%3A')}/converse"
TOOL = {"type": "function", "function": {"name": "search", "description": "Search the web", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


@pytest.fixture()
def aws_env(monkeypatch, tmp_path):
    """The standard chain, isolated: env credentials only (no files, no metadata service)."""
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
              "AWS_ENDPOINT_URL_STS", "AWS_BEARER_TOKEN_BEDROCK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    return monkeypatch


def config(bedrock, anthropic_sim=None, **provider):
    providers = [{"name": "bedrock", "type": "bedrock", "region": "us-east-1", "baseURL": bedrock.url, **provider}]
    targets = [{"provider": "bedrock", "model": MODEL, "priority": 1}]
    if anthropic_sim is not None:
        providers.append({"name": "anthropic", "type": "anthropic", "baseURL": anthropic_sim.url,
                          "apiKey": {"value": "sk-ant-SECRET"}})
        targets.insert(0, {"provider": "anthropic", "model": "claude-sonnet-4-5", "priority": 0})
    return {"providers": providers,
            "routes": [{"name": "claude", "match": {"models": ["claude-*"]}, "targets": targets,
                        "retry": {"attempts": 1}, "timeout": "20s"}]}


def ready(proxy):
    cred = proxy.state.gateway.providers["bedrock"].credential
    if hasattr(cred, "wait"):
        assert cred.wait(10), cred.problem
    return cred


@pytest.fixture()
def gw(bedrock_sim, aws_env):
    with ProxyServer(config(bedrock_sim)) as proxy:
        ready(proxy)
        yield proxy, bedrock_sim


def oai(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)


def last(sim):
    return sim.stats()["lastRequest"]


def test_chat_completion_is_a_signed_converse_call(gw):
    proxy, sim = gw
    raw = oai(proxy).chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5", messages=[{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "hi"}],
        max_tokens=100, temperature=0.5, top_p=0.9, stop=["END"])
    c = raw.parse()
    assert raw.headers["x-detour-target"] == f"bedrock/{MODEL}" and c.model == MODEL
    assert c.choices[0].message.content == CANONICAL and c.choices[0].finish_reason == "stop"
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens > 0
    req = last(sim)
    assert req["path"] == f"/model/{MODEL}/converse"
    assert req["body"]["system"] == [{"text": "Be brief."}]
    assert req["body"]["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.5, "topP": 0.9,
                                              "stopSequences": ["END"]}
    assert req["body"]["messages"] == [{"role": "user", "content": [{"text": "hi"}]}]


def test_streamed_tool_call_with_arguments_in_pieces(gw):
    proxy, sim = gw
    with oai(proxy).chat.completions.stream(model="claude-sonnet-4-5", tools=[TOOL],
                                            messages=[{"role": "user", "content": "fox facts"}]) as stream:
        pieces = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and len(pieces) > 1
    call = choice.message.tool_calls[0]
    assert call.id and call.function.name == "search"
    assert json.loads(call.function.arguments) == {"query": "fox facts"}
    assert last(sim)["path"] == f"/model/{MODEL}/converse-stream"
    assert last(sim)["body"]["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"] == ["query"]


def test_streamed_text_and_tool_results_round_trip(gw):
    proxy, sim = gw
    client = oai(proxy)
    chunks = list(client.chat.completions.create(model="claude-sonnet-4-5", stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == CANONICAL
    assert chunks[-1].usage.completion_tokens > 0
    c = client.chat.completions.create(model="claude-sonnet-4-5", tools=[TOOL], messages=[
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"query": "x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found it"}])
    assert c.choices[0].message.content == CANONICAL
    msgs = last(sim)["body"]["messages"]
    assert msgs[0]["content"][1] == {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
    assert msgs[1]["content"] == [{"toolUse": {"toolUseId": "call_1", "name": "search", "input": {"query": "x"}}}]
    assert msgs[2]["content"] == [{"toolResult": {"toolUseId": "call_1", "content": [{"text": "found it"}]}}]


def test_anthropic_sdk_messages_through_bedrock(gw):
    proxy, sim = gw
    client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
    msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=200,
                                 messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == CANONICAL and msg.stop_reason == "end_turn"
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=200,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == CANONICAL and final.usage.output_tokens > 0
    assert last(sim)["path"] == f"/model/{MODEL}/converse-stream"


def test_openai_responses_through_bedrock(gw):
    proxy, _ = gw
    r = oai(proxy).responses.create(model="claude-sonnet-4-5", input="hi")
    assert r.output_text == CANONICAL and r.status == "completed"
    events = list(oai(proxy).responses.create(model="claude-sonnet-4-5", input="hi", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == CANONICAL


def test_wrong_secret_gets_bedrocks_403_and_no_secret_leaks(bedrock_sim, aws_env):
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")
    with ProxyServer(config(bedrock_sim)) as proxy:
        ready(proxy)
        with pytest.raises(openai.PermissionDeniedError) as exc:
            oai(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    text = str(exc.value.body)
    assert "InvalidSignatureException" in text and "signature" in text
    assert "wrong-secret-value-123" not in text and ACCESS_KEY not in last(bedrock_sim).get("body", "")


def test_bedrock_api_key_is_a_bearer_token(bedrock_sim, aws_env):
    with ProxyServer(config(bedrock_sim, apiKey={"value": API_KEY})) as proxy:
        c = oai(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert c.choices[0].message.content == CANONICAL


@pytest.mark.parametrize("status, name", [(429, "ThrottlingException"), (503, "ServiceUnavailableException"),
                                          (424, "ModelErrorException"), (400, "ServiceQuotaExceededException")])
def test_bedrock_errors_fall_back_to_anthropic(bedrock_sim, anthropic_sim, aws_env, status, name):
    """bedrock first, anthropic second: Bedrock's transient errors (a quota 400 included) fall back."""
    cfg = config(bedrock_sim, anthropic_sim)
    cfg["routes"][0]["targets"][0]["priority"], cfg["routes"][0]["targets"][1]["priority"] = 1, 0
    bedrock_sim.faults(status=status, errorType=name)
    with ProxyServer(cfg) as proxy:
        ready(proxy)
        raw = oai(proxy).chat.completions.with_raw_response.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-detour-target"] == "anthropic/claude-sonnet-4-5"
    assert bedrock_sim.stats()["faultsInjected"] == 1


def test_validation_error_is_the_clients_400(gw):
    proxy, sim = gw
    sim.faults(status=400, errorType="ValidationException", errorMessage="maxTokens too large")
    with pytest.raises(openai.BadRequestError) as exc:
        oai(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert "ValidationException" in str(exc.value.body) and "maxTokens too large" in str(exc.value.body)


def test_anthropic_outage_falls_back_to_bedrock_with_no_client_errors(bedrock_sim, anthropic_sim, aws_env):
    anthropic_sim.faults(status=529, errorType="overloaded_error")
    with ProxyServer(config(bedrock_sim, anthropic_sim)) as proxy:
        ready(proxy)
        client = oai(proxy)
        ac = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
        for i in range(6):
            if i % 3 == 0:
                with client.chat.completions.stream(model="claude-sonnet-4-5",
                                                    messages=[{"role": "user", "content": "hi"}]) as s:
                    assert s.get_final_completion().choices[0].message.content == CANONICAL
            elif i % 3 == 1:
                assert client.chat.completions.create(
                    model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
                ).choices[0].message.content == CANONICAL
            else:
                assert ac.messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                          messages=[{"role": "user", "content": "hi"}]).content[0].text == CANONICAL
    assert bedrock_sim.stats()["requests"] and anthropic_sim.stats()["faultsInjected"] >= 1


@pytest.mark.parametrize("fault", [{"inbandError": {"afterChunks": 0, "type": "throttlingException"}},
                                   {"inbandError": {"afterChunks": 0, "type": "modelStreamErrorException"}},
                                   {"cutAfterChunks": 0}, {"malformed": "sse"}])
def test_stream_failure_before_the_first_token_falls_back(bedrock_sim, anthropic_sim, aws_env, fault):
    cfg = config(bedrock_sim, anthropic_sim)
    cfg["routes"][0]["targets"][0]["priority"], cfg["routes"][0]["targets"][1]["priority"] = 1, 0
    bedrock_sim.faults(**fault)
    with ProxyServer(cfg) as proxy:
        ready(proxy)
        chunks = list(oai(proxy).chat.completions.create(model="claude-sonnet-4-5", stream=True,
                                                         messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == CANONICAL
    assert bedrock_sim.stats()["faultsInjected"] == 1


def test_mid_stream_exception_is_an_error_event_not_a_complete_answer(gw):
    proxy, sim = gw
    sim.faults(inbandError={"afterChunks": 3, "type": "modelStreamErrorException"}, chunkDelay=0.02)
    with httpx.stream("POST", proxy.v1 + "/chat/completions", timeout=20, json={
            "model": "claude-sonnet-4-5", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        body = r.read().decode()
    assert "modelStreamErrorException" in body and "data: [DONE]" not in body


def test_the_simulator_speaks_what_botocores_bedrock_runtime_client_reads(bedrock_sim):
    """botocore's own bedrock-runtime client (its service model, signer and event-stream parser) as
    the oracle of the wire format the simulator speaks and the adapter decodes."""
    import botocore.session
    from botocore.exceptions import ClientError

    session = botocore.session.Session()
    session.set_credentials(ACCESS_KEY, SECRET_KEY)
    client = session.create_client("bedrock-runtime", region_name="us-east-1", endpoint_url=bedrock_sim.url)
    msgs = [{"role": "user", "content": [{"text": "hi"}]}]
    out = client.converse(modelId=MODEL, messages=msgs, inferenceConfig={"maxTokens": 100})
    assert out["output"]["message"]["content"][0]["text"] == CANONICAL and out["stopReason"] == "end_turn"
    events = list(client.converse_stream(modelId=MODEL, messages=msgs, toolConfig={"tools": [{"toolSpec": {
        "name": "search", "inputSchema": {"json": TOOL["function"]["parameters"]}}}]})["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    args = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events if "contentBlockDelta" in e)
    assert json.loads(args) == {"query": "hi"} and events[-1]["metadata"]["usage"]["outputTokens"] > 0
    assert client.count_tokens(modelId=MODEL, input={"converse": {"messages": msgs}})["inputTokens"] == 1
    bedrock_sim.faults(status=429, errorType="ThrottlingException")
    with pytest.raises(ClientError) as exc:
        client.converse(modelId=MODEL, messages=msgs)
    assert exc.value.response["Error"]["Code"] == "ThrottlingException"
    bedrock_sim.clear()
    session.set_credentials(ACCESS_KEY, "not-the-secret")
    bad = session.create_client("bedrock-runtime", region_name="us-east-1", endpoint_url=bedrock_sim.url)
    with pytest.raises(ClientError) as exc:
        bad.converse(modelId=MODEL, messages=msgs)
    assert exc.value.response["Error"]["Code"] == "InvalidSignatureException"


@pytest.mark.parametrize("cut_first", ["bedrock", "anthropic"])
def test_a_stream_cut_mid_answer_is_continued_on_the_other_cloud(bedrock_sim, anthropic_sim, aws_env, cut_first):
    """streamFailover: continue: the delivered text is a prefill (a trailing assistant turn) for
    the next target, in Converse's shape on Bedrock and in Anthropic's on Anthropic."""
    cfg = config(bedrock_sim, anthropic_sim)
    cfg["routes"][0]["streamFailover"] = "continue"
    if cut_first == "bedrock":
        cfg["routes"][0]["targets"][0]["priority"], cfg["routes"][0]["targets"][1]["priority"] = 1, 0
    first, second = (bedrock_sim, anthropic_sim) if cut_first == "bedrock" else (anthropic_sim, bedrock_sim)
    first.faults(cutAfterChunks=3, chunkDelay=0.01)
    with ProxyServer(cfg) as proxy:
        ready(proxy)
        chunks = list(oai(proxy).chat.completions.create(model="claude-sonnet-4-5", stream=True,
                                                         messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == CANONICAL
    body = last(second)["body"]
    tail = body["messages"][-1]
    assert tail["role"] == "assistant"
    assert (tail["content"][0]["text"] if isinstance(tail["content"], list) else tail["content"]).startswith("The quick")


def test_tool_calls_through_messages_and_responses_inbound(gw):
    proxy, _ = gw
    ac = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
    tool = {"name": "search", "description": "Search the web", "input_schema": TOOL["function"]["parameters"]}
    with ac.messages.stream(model="claude-sonnet-4-5", max_tokens=200, tools=[tool],
                            messages=[{"role": "user", "content": "fox facts"}]) as stream:
        msg = stream.get_final_message()
    use = next(b for b in msg.content if b.type == "tool_use")
    assert (use.name, use.input, msg.stop_reason) == ("search", {"query": "fox facts"}, "tool_use")
    r = oai(proxy).responses.create(model="claude-sonnet-4-5", input="fox facts", tools=[
        {"type": "function", "name": "search", "parameters": TOOL["function"]["parameters"]}])
    call = next(o for o in r.output if o.type == "function_call")
    assert call.name == "search" and json.loads(call.arguments) == {"query": "fox facts"}


def test_count_tokens_is_answered_by_claude_on_bedrock(gw):
    """/v1/messages/count_tokens (Claude Code asks it constantly) on a Bedrock-only route: Bedrock's
    CountTokens counts the client's Anthropic body as Claude's InvokeModel body, signed like the rest."""
    proxy, sim = gw
    client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
    n = client.messages.count_tokens(model="claude-sonnet-4-5", system="one two",
                                     messages=[{"role": "user", "content": "three four five"}])
    assert n.input_tokens == 5
    req = last(sim)
    assert req["path"] == f"/model/{MODEL}/count-tokens" and set(req["body"]["input"]) == {"invokeModel"}
    body = json.loads(base64.b64decode(req["body"]["input"]["invokeModel"]["body"]))
    assert body["anthropic_version"] == "bedrock-2023-05-31" and "model" not in body and body["system"] == "one two"
    sim.faults(status=400, errorType="ValidationException", errorMessage="bad block")
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}])
    assert "bad block" in str(exc.value)
