"""The Google flavour (issue 16), as seen through Google's and Anthropic's official SDKs: the
`google-genai` client on the Gemini API and on Vertex AI, and `anthropic.AnthropicVertex` on
rawPredict. If the simulator speaks these wire formats as the SDKs read them, the gemini and
vertex adapters tested against it speak them too."""

from __future__ import annotations

import anthropic
import google.auth.credentials
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from detour_sim.text import DEFAULT_REPLY

TOOL = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="lookup", description="look things up",
    parameters=types.Schema(type="OBJECT", properties={"query": types.Schema(type="STRING")}, required=["query"]))])


class SimToken(google.auth.credentials.Credentials):
    """Credentials that carry a token the simulator issued (fetched with its own key elsewhere)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def refresh(self, request) -> None:   # the token is valid for the test's lifetime
        pass


@pytest.fixture
async def google(make_sim):
    return await make_sim("google", "g")


@pytest.fixture
def token(google) -> str:
    oauth = google.sim.api.oauth
    oauth._issue()                        # a token issued by the sim, as its /token would
    return next(iter(oauth.tokens))


def _gemini(google) -> genai.Client:
    return genai.Client(api_key="AIza-test", http_options=types.HttpOptions(base_url=google.url, timeout=10_000))


def _vertex(google, token) -> genai.Client:
    return genai.Client(vertexai=True, project="p", location="us-east5", credentials=SimToken(token),
                        http_options=types.HttpOptions(base_url=google.url, api_version="v1", timeout=10_000))


async def test_gemini_api_text_stream_and_usage(google):
    client = _gemini(google)
    r = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hello",
                                                 config=types.GenerateContentConfig(system_instruction="Be brief."))
    assert r.text == DEFAULT_REPLY and r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.usage_metadata.total_token_count == r.usage_metadata.prompt_token_count + 8
    pieces = [c.text async for c in await client.aio.models.generate_content_stream(model="gemini-2.5-flash",
                                                                                     contents="hello")]
    assert "".join(p or "" for p in pieces) == DEFAULT_REPLY
    last = (await google.stats())["lastRequest"]
    assert last["headers"]["x-goog-api-key"] == "<redacted>" and last["query"] == {"alt": "sse"}


async def test_gemini_api_function_call_and_max_tokens(google):
    client = _gemini(google)
    r = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="fox",
        config=types.GenerateContentConfig(tools=[TOOL], automatic_function_calling=types.AutomaticFunctionCallingConfig(
            disable=True)))
    call = r.function_calls[0]
    assert call.name == "lookup" and call.args == {"query": "fox"}
    assert r.candidates[0].content.parts[0].thought_signature   # bytes, as Gemini 3 sends them
    short = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hello",
                                                     config=types.GenerateContentConfig(max_output_tokens=3))
    assert short.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS and short.text == "The quick brown fox"


async def test_gemini_api_errors_are_googles(google):
    await google.faults({"status": 429, "retryAfter": "2"})
    with pytest.raises(genai_errors.ClientError) as exc:
        await _gemini(google).aio.models.generate_content(model="gemini-2.5-flash", contents="hello")
    assert exc.value.code == 429 and exc.value.status == "RESOURCE_EXHAUSTED"
    await google.faults({})
    bare = genai.Client(api_key="x", http_options=types.HttpOptions(base_url=google.url, headers={"x-goog-api-key": ""}))
    with pytest.raises(genai_errors.ClientError) as exc:
        await bare.aio.models.generate_content(model="gemini-2.5-flash", contents="hello")
    assert exc.value.code == 403 and exc.value.status == "PERMISSION_DENIED"


async def test_vertex_gemini_needs_the_sims_token(google, token):
    r = await _vertex(google, token).aio.models.generate_content(model="gemini-2.5-pro", contents="hello")
    assert r.text == DEFAULT_REPLY
    assert (await google.stats())["lastRequest"]["path"] == \
        "/v1/projects/p/locations/us-east5/publishers/google/models/gemini-2.5-pro:generateContent"
    with pytest.raises(genai_errors.ClientError) as exc:
        await _vertex(google, "ya29.forged").aio.models.generate_content(model="gemini-2.5-pro", contents="hello")
    assert exc.value.code == 401 and exc.value.status == "UNAUTHENTICATED"


async def test_claude_on_vertex_through_anthropic_vertex(google, token):
    client = anthropic.AsyncAnthropicVertex(region="us-east5", project_id="p", access_token=token,
                                            base_url=google.url + "/v1", max_retries=0, timeout=10)
    m = await client.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=100,
                                     messages=[{"role": "user", "content": "hello"}])
    assert m.content[0].text == DEFAULT_REPLY and m.model == "claude-sonnet-4-5@20250929"
    async with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                      messages=[{"role": "user", "content": "hello"}]) as s:
        assert "".join([t async for t in s.text_stream]) == DEFAULT_REPLY
    counted = await client.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "a b c"}])
    assert counted.input_tokens == 3
    assert (await google.stats())["lastRequest"]["path"].endswith("/publishers/anthropic/models/count-tokens:rawPredict")
    await google.faults({"status": 529, "errorType": "overloaded_error"})
    with pytest.raises(anthropic.APIStatusError) as exc:
        await client.messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                     messages=[{"role": "user", "content": "hello"}])
    assert exc.value.status_code == 529 and exc.value.body["error"]["type"] == "overloaded_error"
    await client.close()
