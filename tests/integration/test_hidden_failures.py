"""Failures hidden in a 200 and context-window fallback (issue 16), official openai SDK through Detour.

Each test sets the simulated failure on the primary and asserts the client got the
secondary's real answer (or, without the route setting, the failure itself)."""

from __future__ import annotations

import openai
import pytest

from support import ProxyServer, two_provider_config
from test_metrics import scrape, val

MSGS = [{"role": "user", "content": "hi"}]


def client(proxy: ProxyServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)


def config(primary, secondary, **route):
    return two_provider_config(primary, secondary, **route)


@pytest.mark.parametrize("answer", ["empty", "blank", "reasoningOnly"])
def test_empty_blank_and_reasoning_only_answers_fail_over(primary, secondary, answer):
    primary.faults(answer=answer)
    cfg = config(primary, secondary, hiddenFailures=["empty", "reasoning-only"])
    with ProxyServer(cfg) as proxy:
        c = client(proxy)
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS)
        assert raw.parse().choices[0].message.content.strip()
        assert raw.headers["x-detour-target"] == "secondary/llama-3-8b"
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert text.strip(), "the stream failed over before the first token"
        _, samples = scrape(proxy)
    assert primary.requests() == 2 and secondary.requests() == 2
    assert val(samples, "detour_upstream_attempts_total", route="chat", provider="primary",
               model="gpt-4o-mini", result="empty_answer") == 2


def test_without_the_setting_an_empty_answer_is_returned(primary, secondary):
    primary.faults(answer="empty")
    with ProxyServer(config(primary, secondary)) as proxy:
        out = client(proxy).chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert out.choices[0].message.content == ""
    assert secondary.requests() == 0


def test_reasoning_only_is_an_answer_unless_the_route_says_so(primary, secondary):
    primary.faults(answer="reasoningOnly")
    with ProxyServer(config(primary, secondary, hiddenFailures=["empty"])) as proxy:
        c = client(proxy)
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
        reasoning = "".join(getattr(ch.choices[0].delta, "reasoning_content", None) or ""
                            for ch in stream if ch.choices)
    assert reasoning and secondary.requests() == 0


def test_tool_call_only_answer_is_not_empty(primary, secondary):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with ProxyServer(config(primary, secondary, hiddenFailures=["empty", "reasoning-only"])) as proxy:
        c = client(proxy)
        out = c.chat.completions.create(model="gpt-4o-mini", messages=MSGS, tools=tools)
        assert out.choices[0].message.tool_calls and not out.choices[0].message.content
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=MSGS, tools=tools, stream=True)
        assert any(ch.choices and ch.choices[0].delta.tool_calls for ch in stream)
    assert secondary.requests() == 0


def test_empty_everywhere_is_a_clear_502(primary, secondary):
    primary.faults(answer="empty")
    secondary.faults(answer="blank")
    with ProxyServer(config(primary, secondary, hiddenFailures=["empty"])) as proxy:
        with pytest.raises(openai.APIStatusError) as exc:
            client(proxy).chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert exc.value.status_code == 502
    assert "no content" in str(exc.value)


@pytest.mark.parametrize("status", [400, 200])
@pytest.mark.parametrize("stream", [False, True])
def test_context_length_error_moves_to_a_larger_context(primary, secondary, status, stream):
    primary.faults(contextLength=True, status=status)
    targets = [{"provider": "primary", "model": "gpt-4o-mini", "priority": 0, "contextWindow": 8192},
               {"provider": "secondary", "model": "llama-3-8b", "priority": 1, "contextWindow": 131072}]
    cfg = config(primary, secondary, targets=targets, hiddenFailures=["context-window"])
    cfg["health"]["breaker"]["consecutiveFailures"] = 1
    with ProxyServer(cfg) as proxy:
        c = client(proxy)
        for _ in range(3):   # a too-long prompt is not the target's fault: no breaker opens
            if stream:
                chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True))
                assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            else:
                raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS)
                assert raw.headers["x-detour-target"] == "secondary/llama-3-8b"
        snap = proxy.state.registry.snapshot(proxy.state.clock.now())
        _, samples = scrape(proxy)
    assert val(samples, "detour_upstream_attempts_total", route="chat", provider="primary",
               model="gpt-4o-mini", result="context_window") == 3
    assert primary.requests() == 3, "the primary's breaker must stay closed"
    assert all(s.state.value == "closed" for s in snap)


def test_context_length_400_without_the_setting_is_returned(primary, secondary):
    primary.faults(contextLength=True)
    with ProxyServer(config(primary, secondary)) as proxy:
        with pytest.raises(openai.BadRequestError) as exc:
            client(proxy).chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert exc.value.code == "context_length_exceeded"
    assert secondary.requests() == 0


def test_context_length_without_a_larger_target_returns_the_400(primary, secondary):
    primary.faults(contextLength=True)
    targets = [{"provider": "primary", "model": "gpt-4o-mini", "priority": 0, "contextWindow": 128000},
               {"provider": "secondary", "model": "llama-3-8b", "priority": 1, "contextWindow": 8192}]
    with ProxyServer(config(primary, secondary, targets=targets, hiddenFailures=["context-window"])) as proxy:
        with pytest.raises(openai.BadRequestError) as exc:
            client(proxy).chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert exc.value.code == "context_length_exceeded"
    assert secondary.requests() == 0


def test_anthropic_prompt_too_long_and_thinking_only(anthropic_sim, secondary):
    """The same rules on the canonical answer of another adapter (Anthropic)."""
    cfg = {
        "providers": [
            {"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url, "apiKey": {"value": "sk-ant-X"}},
            {"name": "secondary", "type": "openai-compatible", "baseURL": secondary.v1, "apiKey": {"value": "sk-2"}},
        ],
        "routes": [{"name": "chat", "match": {"models": ["gpt-4o-mini"]},
                    "targets": [{"provider": "claude", "model": "claude-sonnet-4", "priority": 0},
                                {"provider": "secondary", "model": "llama-3-8b", "priority": 1}],
                    "hiddenFailures": ["reasoning-only", "context-window"], "timeout": "10s"}],
    }
    with ProxyServer(cfg) as proxy:
        c = client(proxy)
        for fault in ({"contextLength": True}, {"answer": "reasoningOnly"}):
            anthropic_sim.faults(**fault)
            for stream in (False, True):
                if stream:
                    text = "".join(ch.choices[0].delta.content or "" for ch in
                                   c.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
                                   if ch.choices)
                else:
                    text = c.chat.completions.create(model="gpt-4o-mini", messages=MSGS).choices[0].message.content
                assert text and text.strip(), fault
    assert secondary.requests() == 4


def test_gemini_context_length_error(google_sim, secondary):
    """Gemini's own error text ("input token count ... exceeds") moves the request to the larger target."""
    cfg = {
        "providers": [
            {"name": "gemini", "type": "gemini", "baseURL": google_sim.url + "/v1beta",
             "apiKey": {"value": "AIzaSy-gemini-key"}},
            {"name": "secondary", "type": "openai-compatible", "baseURL": secondary.v1, "apiKey": {"value": "sk-2"}},
        ],
        "routes": [{"name": "chat", "match": {"models": ["gpt-4o-mini"]},
                    "targets": [{"provider": "gemini", "model": "gemini-2.5-flash", "contextWindow": 1048576},
                                {"provider": "secondary", "model": "llama-3-8b", "priority": 1,
                                 "contextWindow": 2000000}],
                    "hiddenFailures": ["empty", "context-window"], "timeout": "10s"}],
    }
    google_sim.faults(contextLength=True)
    with ProxyServer(cfg) as proxy:
        raw = client(proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS)
    assert raw.headers["x-detour-target"] == "secondary/llama-3-8b"
    assert raw.parse().choices[0].message.content
