"""`gemini` and `vertex` providers through Detour on real loopback HTTP (issue 16), with the
official SDKs as clients and the simulator's Google flavour as the upstream: the Gemini API
with an API key, Claude and Gemini on Vertex with a service-account key whose token the
simulator issues (the JWT assertion checked against the key), and Application Default
Credentials from a GCE metadata server."""

from __future__ import annotations

import json
import logging

import anthropic
import httpx
import openai
import pytest

from support import ProxyServer, wait_until

CANONICAL = "The quick brown fox jumps over the lazy dog."
TOOL = {"type": "function", "function": {"name": "search", "description": "Search the web", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"],
    "additionalProperties": False}}}
API_KEY = "AIzaSy-gemini-SECRET-key"


@pytest.fixture()
def sa_file(google_sim, tmp_path):
    """A service-account key file from the simulator (its token_uri points at the simulator)."""
    path = tmp_path / "sa.json"
    path.write_text(google_sim.admin.get("/_sim/google/service-account").text)
    return str(path)


def _config(sim, sa_file, **route):
    return {
        "providers": [
            {"name": "gemini", "type": "gemini", "baseURL": sim.url + "/v1beta", "apiKey": {"value": API_KEY}},
            {"name": "vertex", "type": "vertex", "baseURL": sim.url, "project": "sim-project",
             "location": "us-east5", "credentialsFile": sa_file},
        ],
        "routes": [
            {"name": "gemini", "match": {"models": ["gemini-2.5-flash"]},
             "targets": [{"provider": "gemini", "model": "gemini-2.5-flash"},
                         {"provider": "vertex", "model": "gemini-2.5-pro", "priority": 1}],
             "retry": {"attempts": 1}, **route},
            {"name": "claude", "match": {"models": ["claude-sonnet-4-5"]},
             "targets": [{"provider": "vertex", "model": "claude-sonnet-4-5@20250929"},
                         {"provider": "gemini", "model": "gemini-2.5-flash", "priority": 1}],
             "retry": {"attempts": 1}, **route},
            {"name": "vertex-gemini", "match": {"models": ["vertex-gemini"]},
             "targets": [{"provider": "vertex", "model": "gemini-2.5-pro"}], **route},
            {"name": "gemini-3", "match": {"models": ["gemini-3-pro-preview"]},
             "targets": [{"provider": "gemini", "model": "gemini-3-pro-preview"}], **route},
        ],
    }


def _token_ready(proxy) -> str:
    token = proxy.state.gateway.providers["vertex"].credential
    assert token.wait(10), token.problem
    return token.get()


@pytest.fixture()
def gw(google_sim, sa_file):
    with ProxyServer(_config(google_sim, sa_file)) as proxy:
        _token_ready(proxy)
        yield proxy, google_sim


def oai(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)


def _last(sim):
    return sim.stats()["lastRequest"]


# -- chat completions ------------------------------------------------------------------------

@pytest.mark.parametrize("model, target, path", [
    ("gemini-2.5-flash", "gemini/gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:generateContent"),
    ("claude-sonnet-4-5", "vertex/claude-sonnet-4-5@20250929",
     "/v1/projects/sim-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"),
    ("vertex-gemini", "vertex/gemini-2.5-pro",
     "/v1/projects/sim-project/locations/us-east5/publishers/google/models/gemini-2.5-pro:generateContent"),
])
def test_chat_completion_on_each_google_target(gw, model, target, path):
    proxy, sim = gw
    raw = oai(proxy).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_tokens=100, temperature=0.5)
    c = raw.parse()
    assert raw.headers["x-detour-target"] == target
    assert c.choices[0].message.content == CANONICAL and c.choices[0].finish_reason == "stop"
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens > 0
    last = _last(sim)
    assert last["path"] == path and last["authSent"]
    if "claude" in model:
        assert last["body"]["anthropic_version"] == "vertex-2023-10-16" and last["body"]["system"] == "Be brief."
    else:
        assert last["body"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert last["body"]["generationConfig"] == {"maxOutputTokens": 100, "temperature": 0.5}


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "claude-sonnet-4-5", "vertex-gemini"])
def test_streamed_tool_call_accumulates_in_the_openai_sdk(gw, model):
    proxy, sim = gw
    with oai(proxy).chat.completions.stream(model=model, messages=[{"role": "user", "content": "fox facts"}],
                                            tools=[TOOL]) as stream:
        arg_pieces = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "search" and json.loads(call.function.arguments) == {"query": "fox facts"}
    assert call.id
    if model == "claude-sonnet-4-5":
        assert len(arg_pieces) > 1    # Claude streams the arguments in pieces; Gemini sends a call whole


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "claude-sonnet-4-5", "vertex-gemini"])
def test_text_stream_with_usage(gw, model):
    proxy, _ = gw
    chunks = list(oai(proxy).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                      stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == CANONICAL
    assert chunks[-1].usage.total_tokens > 0 and chunks[-1].choices == []


@pytest.mark.parametrize("stream", [False, True])
def test_tool_result_round_trip_keeps_gemini_3_thought_signatures(gw, stream):
    """Gemini 3 refuses a function-call history without the calls' thoughtSignatures (the sim
    too): the signature travels in the tool call id and comes back on the functionCall part."""
    proxy, sim = gw
    client = oai(proxy)
    model = "gemini-3-pro-preview"
    if stream:
        with client.chat.completions.stream(model=model, messages=[{"role": "user", "content": "q"}],
                                            tools=[TOOL]) as s:
            message = s.get_final_completion().choices[0].message
    else:
        message = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "q"}],
                                                 tools=[TOOL]).choices[0].message
    call = message.tool_calls[0]
    assert "__thought__" in call.id
    second = client.chat.completions.create(model=model, tools=[TOOL], messages=[
        {"role": "user", "content": "q"}, message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "three results"}])
    assert second.choices[0].message.content == CANONICAL
    sent = _last(sim)["body"]["contents"]
    assert sent[1]["parts"][0]["functionCall"]["name"] == "search"
    assert sent[1]["parts"][0]["thoughtSignature"].startswith("c2ltLXNpZ25hdHVyZS")   # base64 "sim-signature"
    assert sent[2]["parts"][0] == {"functionResponse": {"name": "search", "response": {"content": "three results"}}}


def test_a_tool_history_from_another_model_reaches_gemini_3(gw):
    proxy, sim = gw
    history = [{"role": "user", "content": "q"},
               {"role": "assistant", "tool_calls": [{"id": "call_from_gpt", "type": "function",
                                                     "function": {"name": "search", "arguments": '{"query": "q"}'}}]},
               {"role": "tool", "tool_call_id": "call_from_gpt", "content": "{\"hits\": 2}"}]
    c = oai(proxy).chat.completions.create(model="gemini-3-pro-preview", tools=[TOOL], messages=history)
    assert c.choices[0].message.content == CANONICAL
    assert _last(sim)["body"]["contents"][1]["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"


def test_structured_output(gw):
    proxy, sim = gw
    client = oai(proxy)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    out = client.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "Paris"}],
                                         response_format={"type": "json_schema",
                                                          "json_schema": {"name": "c", "schema": schema, "strict": True}})
    assert set(json.loads(out.choices[0].message.content)) == {"city"}
    assert _last(sim)["body"]["generationConfig"]["responseSchema"] == {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


# -- the other inbound APIs --------------------------------------------------------------------

@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash"])
def test_anthropic_sdk_through_messages(gw, model):
    proxy, _ = gw
    client = anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)
    msg = client.messages.create(model=model, max_tokens=100, system="Be brief.",
                                 messages=[{"role": "user", "content": "hi"}],
                                 extra_headers={"anthropic-beta": "context-1m-2025-08-07"})
    assert msg.content[0].text == CANONICAL and msg.stop_reason == "end_turn"
    if model.startswith("claude"):   # Claude on Vertex reads the beta header, as AnthropicVertex sends it
        assert _last(gw[1])["headers"]["anthropic-beta"] == "context-1m-2025-08-07"
    with client.messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": "fox"}],
                                tools=[{"name": "search", "input_schema": {
                                    "type": "object", "properties": {"query": {"type": "string"}}}}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].input == {"query": "fox"}


def test_count_tokens_is_answered_by_claude_on_vertex(gw):
    """/v1/messages/count_tokens (Claude Code asks it constantly): Claude on Vertex counts through
    `count-tokens:rawPredict`; a route whose only counters are Gemini answers 400 with the reason."""
    proxy, sim = gw
    client = anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)
    n = client.messages.count_tokens(model="claude-sonnet-4-5", system="one two",
                                     messages=[{"role": "user", "content": "three four five"}])
    assert n.input_tokens == 5
    last = _last(sim)
    assert last["path"] == "/v1/projects/sim-project/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
    assert last["body"]["model"] == "claude-sonnet-4-5@20250929" and last["body"]["anthropic_version"] == "vertex-2023-10-16"
    with pytest.raises(anthropic.BadRequestError, match="count tokens"):
        client.messages.count_tokens(model="vertex-gemini", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "claude-sonnet-4-5"])
def test_openai_responses_through_responses(gw, model):
    proxy, _ = gw
    resp = oai(proxy).responses.create(model=model, instructions="Be brief.", input="hi")
    assert resp.status == "completed" and resp.output_text == CANONICAL
    with oai(proxy).responses.stream(model=model, input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == CANONICAL


# -- failures ----------------------------------------------------------------------------------

@pytest.mark.parametrize("status, word", [(429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"), (500, "INTERNAL"),
                                          (504, "DEADLINE_EXCEEDED")])
def test_transient_google_errors_fall_back(gw, status, word):
    proxy, sim = gw
    sim.faults(status=status, errorType=word, paths=["/v1beta/models/gemini-2.5-flash:generateContent"])
    raw = oai(proxy).chat.completions.with_raw_response.create(model="gemini-2.5-flash",
                                                               messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-detour-target"] == "vertex/gemini-2.5-pro" and raw.parse().choices[0].message.content == CANONICAL


def test_request_errors_are_returned_not_failed_over(gw):
    proxy, sim = gw
    sim.faults(status=400, errorType="INVALID_ARGUMENT", errorMessage="bad schema for AIzaSy-gemini-SECRET-key")
    with pytest.raises(openai.BadRequestError) as exc:
        oai(proxy).chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
    assert "INVALID_ARGUMENT" in str(exc.value) and API_KEY not in str(exc.value)
    assert sim.requests("/v1beta/models/gemini-2.5-flash:generateContent") == 1
    assert sim.requests("/v1/projects/sim-project/locations/us-east5/publishers/google/models/"
                        "gemini-2.5-pro:generateContent") == 0


def test_claude_overloaded_on_vertex_falls_back(gw):
    proxy, sim = gw
    sim.faults(status=529, errorType="overloaded_error", paths=["/v1/projects/sim-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"])
    raw = oai(proxy).chat.completions.with_raw_response.create(model="claude-sonnet-4-5",
                                                               messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-detour-target"] == "gemini/gemini-2.5-flash"


def test_a_stream_error_before_the_first_token_fails_over_and_after_it_is_honest(gw):
    proxy, sim = gw
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    sim.faults(paths=[path], inbandError={"afterChunks": 0, "type": "UNAVAILABLE"})
    chunks = list(oai(proxy).chat.completions.create(model="gemini-2.5-flash", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == CANONICAL
    # chunks paced apart: the first ones reach the client before the error does
    sim.faults(paths=[path], inbandError={"afterChunks": 3, "type": "INTERNAL"}, chunkDelay=0.05)
    text = _raw_stream(proxy)
    head, _, error = text.rpartition("event: error\ndata: ")
    delivered = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                        for line in head.splitlines() if line.startswith("data: {"))
    assert delivered == "The quick brown fox" and "[DONE]" not in text
    err = json.loads(error.split("\n")[0])["error"]
    assert err["code"] == "stream_interrupted" and "INTERNAL" in err["message"] and err["chunks_delivered"] == 3
    sim.faults(paths=[path], cutAfterChunks=3, chunkDelay=0.05)
    text = _raw_stream(proxy)
    assert "event: error" in text and "before a finishReason" in text and "[DONE]" not in text


def _raw_stream(proxy) -> str:
    r = httpx.post(proxy.v1 + "/chat/completions", json={
        "model": "gemini-2.5-flash", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 200
    return r.text


# -- credentials -------------------------------------------------------------------------------

def test_api_key_missing_is_a_403_that_falls_back(google_sim, sa_file):
    cfg = _config(google_sim, sa_file)
    del cfg["providers"][0]["apiKey"]
    with ProxyServer(cfg) as proxy:
        _token_ready(proxy)
        raw = oai(proxy).chat.completions.with_raw_response.create(model="gemini-2.5-flash",
                                                                   messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-detour-target"] == "vertex/gemini-2.5-pro"


def test_service_account_token_is_fetched_refreshed_ahead_of_expiry_and_never_shown(google_sim, sa_file, caplog):
    google_sim.admin.put("/_sim/google/token", json={"lifetime": 2}).raise_for_status()
    caplog.set_level(logging.DEBUG)
    with ProxyServer(_config(google_sim, sa_file)) as proxy:
        first = _token_ready(proxy)
        client = oai(proxy)
        seen = set()

        def refreshed():   # every request succeeds while the 2 s tokens are replaced
            c = client.chat.completions.create(model="vertex-gemini", messages=[{"role": "user", "content": "hi"}])
            assert c.choices[0].message.content == CANONICAL
            seen.add(proxy.state.gateway.providers["vertex"].credential.get())
            return google_sim.stats()["tokensIssued"] >= 3

        wait_until(refreshed, 15, "two token refreshes", interval=0.05)
        assert len(seen - {None}) >= 2 and None not in seen
        metrics = httpx.get(proxy.url + "/metrics").text
        google_sim.faults(status=403, errorType="PERMISSION_DENIED",
                          errorMessage=f"caller with token {first} may not")
        with pytest.raises(openai.PermissionDeniedError) as exc:
            client.chat.completions.create(model="vertex-gemini", messages=[{"role": "user", "content": "hi"}])
        current = proxy.state.gateway.providers["vertex"].credential.get()
    for tok in seen | {first, current}:
        assert tok not in metrics and tok not in caplog.text and tok not in str(exc.value.body)
    assert google_sim.stats()["tokensRefused"] == 0


def test_token_endpoint_outage_keeps_the_token_then_makes_vertex_ineligible(google_sim, sa_file, caplog, monkeypatch):
    from detour_proxy.transport import google_auth

    monkeypatch.setattr(google_auth, "FIRST_BACKOFF", 0.1)   # retries 0.1 s, 0.2 s, ... apart (1 s in production)
    # 400 invalid_grant: google-auth itself retries a 5xx internal_failure for ~3 s before giving up
    google_sim.admin.put("/_sim/google/token", json={"failStatus": 400}).raise_for_status()
    with ProxyServer(_config(google_sim, sa_file)) as proxy:
        wait_until(lambda: google_sim.stats()["tokensRefused"] >= 1 and
                   proxy.state.gateway.providers["vertex"].credential.problem, 10, "a refused token fetch")
        raw = oai(proxy).chat.completions.with_raw_response.create(model="claude-sonnet-4-5",
                                                                   messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-detour-target"] == "gemini/gemini-2.5-flash"   # vertex skipped, not sent unauthenticated
        with pytest.raises(openai.APIStatusError) as exc:
            oai(proxy).chat.completions.create(model="vertex-gemini", messages=[{"role": "user", "content": "hi"}])
        assert "no Google access token" in str(exc.value) and exc.value.status_code == 503
        metrics = httpx.get(proxy.url + "/metrics").text
        assert 'detour_provider_credentials_ok{provider="vertex"} 0.0' in metrics
        assert 'detour_provider_credential_fetches_total{provider="vertex",result="error"}' in metrics
        google_sim.admin.put("/_sim/google/token", json={"failStatus": None}).raise_for_status()
        _token_ready(proxy)
        wait_until(lambda: 'detour_provider_credentials_ok{provider="vertex"} 1.0' in httpx.get(proxy.url + "/metrics").text,
                   5, "the credentials gauge back at 1")
        ok = oai(proxy).chat.completions.create(model="vertex-gemini", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content == CANONICAL
    assert "cannot get a Google access token" in caplog.text


def test_a_key_signed_by_someone_else_is_refused(google_sim, sa_file, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    doc = json.loads(open(sa_file).read())
    doc["private_key"] = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    with ProxyServer(_config(google_sim, str(forged))) as proxy:
        wait_until(lambda: proxy.state.gateway.providers["vertex"].credential.problem, 10, "a refused fetch")
        assert "Invalid JWT Signature" in proxy.state.gateway.providers["vertex"].credential.problem
        assert proxy.state.gateway.providers["vertex"].credential.get() is None
    assert google_sim.stats()["tokensIssued"] == 0


def test_workload_identity_federation_external_account(google_sim, tmp_path):
    """An `external_account` credentials file (GKE/EKS workload identity federation): the
    workload's own token, read from a file, is exchanged at Google's STS for an access token."""
    subject = tmp_path / "token"
    subject.write_text("sim-kubernetes-service-account-token")
    config = tmp_path / "external.json"
    config.write_text(json.dumps({
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": google_sim.url + "/sts/v1/token",
        "credential_source": {"file": str(subject)},
    }))
    with ProxyServer(_config(google_sim, str(config))) as proxy:
        _token_ready(proxy)
        c = oai(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert c.choices[0].message.content == CANONICAL
    assert google_sim.stats()["tokensIssued"] == 1 and google_sim.stats()["tokensRefused"] == 0


def test_application_default_credentials_from_the_metadata_server(google_sim, monkeypatch, tmp_path):
    host = google_sim.url.removeprefix("http://")
    monkeypatch.setenv("GCE_METADATA_HOST", host)
    monkeypatch.setenv("GCE_METADATA_IP", host)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))      # no gcloud user credentials
    monkeypatch.setenv("NO_GCE_CHECK", "False")
    cfg = _config(google_sim, "unused")
    del cfg["providers"][1]["credentialsFile"]
    with ProxyServer(cfg) as proxy:
        _token_ready(proxy)
        c = oai(proxy).chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert c.choices[0].message.content == CANONICAL
    assert google_sim.stats()["tokensIssued"] >= 1


def test_a_claude_stream_cut_on_anthropic_continues_on_vertex(anthropic_sim, google_sim, sa_file):
    """streamFailover: continue across clouds: the answer Anthropic started is finished by the
    same model on Vertex (a prefill through streamRawPredict), seamlessly for the client."""
    cfg = {"providers": [
        {"name": "anthropic", "type": "anthropic", "baseURL": anthropic_sim.url, "apiKey": {"value": "sk-ant-SECRET"}},
        {"name": "vertex", "type": "vertex", "baseURL": google_sim.url, "project": "sim-project",
         "location": "us-east5", "credentialsFile": sa_file}],
        "routes": [{"name": "claude", "streamFailover": "continue", "retry": {"attempts": 1},
                    "targets": [{"provider": "anthropic", "model": "claude-sonnet-4-5"},
                                {"provider": "vertex", "model": "claude-sonnet-4-5@20250929", "priority": 1}]}]}
    anthropic_sim.faults(cutAfterChunks=3, chunkDelay=0.05)
    with ProxyServer(cfg) as proxy:
        _token_ready(proxy)
        chunks = list(oai(proxy).chat.completions.create(model="claude-sonnet-4-5", stream=True,
                                                          messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == CANONICAL
    sent = google_sim.stats()["lastRequest"]
    assert sent["path"].endswith(":streamRawPredict")
    assert sent["body"]["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "The quick brown fox"}]}
