"""Optional OpenTelemetry tracing: a span per request and per attempt when on; no import when off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from detour_proxy import tracing
from support import ProxyServer, chat_body, two_provider_config
from test_logs import CLIENT_KEY, PROMPT, PROVIDER_KEYS, ProxyProcess, body, write_config

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402


@pytest.fixture()
def spans():
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


def test_spans_per_request_and_attempt_with_route_and_target(spans, primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["providers"][0]["apiKey"] = {"value": PROVIDER_KEYS[0]}
    primary.faults(status=503)                 # 503, retried, then the secondary serves
    with ProxyServer(cfg) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(text=PROMPT), timeout=10,
                       headers={"x-request-id": "req-trace-1", "authorization": f"Bearer {CLIENT_KEY}"})
        assert r.status_code == 200 and r.headers["x-detour-attempts"] == "3"
        with httpx.stream("POST", proxy.v1 + "/chat/completions", json=chat_body(text=PROMPT, stream=True),
                          headers={"x-request-id": "req-trace-2"}, timeout=10) as s:
            s.read()
    finished = spans.get_finished_spans()
    requests = {s.attributes["detour.request_id"]: s for s in finished if s.name.startswith("detour chat")}
    attempts = [s for s in finished if s.name == "detour attempt"]
    assert set(requests) == {"req-trace-1", "req-trace-2"}

    req = requests["req-trace-1"]
    assert req.attributes["detour.route"] == "chat"
    assert req.attributes["detour.target"] == "secondary/llama-3-8b"
    assert req.attributes["detour.attempts"] == 3
    assert req.attributes["http.response.status_code"] == 200
    assert req.attributes["detour.outcome"] == "success"
    mine = sorted((a for a in attempts if a.parent and a.parent.span_id == req.context.span_id),
                  key=lambda a: a.attributes["detour.attempt"])
    assert [a.context.trace_id for a in mine] == [req.context.trace_id] * 3
    assert [(a.attributes["detour.target"], a.attributes["detour.reason"], a.attributes["detour.result"])
            for a in mine] == [("primary/gpt-4o-mini", "first", "http_5xx"),
                               ("primary/gpt-4o-mini", "retry", "http_5xx"),
                               ("secondary/llama-3-8b", "fallback", "success")]
    assert [a.attributes["detour.attempt"] for a in mine] == [1, 2, 3]
    assert mine[0].attributes["http.response.status_code"] == 503
    assert mine[0].status.status_code.name == "ERROR" and mine[2].status.status_code.name == "UNSET"
    for a in mine:
        assert req.start_time <= a.start_time <= a.end_time <= req.end_time

    stream = requests["req-trace-2"]
    assert stream.attributes["detour.stream"] is True
    assert any(a.parent.span_id == stream.context.span_id for a in attempts)

    dump = json.dumps([json.loads(s.to_json()) for s in finished])
    for secret in (PROMPT, CLIENT_KEY, *PROVIDER_KEYS, "SECRET"):
        assert secret not in dump, f"{secret!r} in spans"


def test_hedged_attempts_get_spans_too(spans, primary, secondary):
    primary.faults(latency=1.0)                # slow: a hedge goes to the secondary and wins
    with ProxyServer(two_provider_config(primary, secondary, hedge={"after": "100ms"})) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10,
                       headers={"x-request-id": "req-hedge"})
        assert r.status_code == 200 and r.headers["x-detour-target"] == "secondary/llama-3-8b"
    finished = spans.get_finished_spans()
    req = next(s for s in finished if s.name == "detour chat")
    mine = {a.attributes["detour.target"]: a for a in finished
            if a.name == "detour attempt" and a.parent.span_id == req.context.span_id}
    assert set(mine) == {"primary/gpt-4o-mini", "secondary/llama-3-8b"}
    assert mine["secondary/llama-3-8b"].attributes["detour.reason"] == "hedge"
    assert mine["secondary/llama-3-8b"].attributes["detour.result"] == "success"
    assert mine["primary/gpt-4o-mini"].attributes["detour.result"] == "cancelled"   # lost the race
    assert mine["secondary/llama-3-8b"].start_time >= mine["primary/gpt-4o-mini"].start_time
    # Both racing attempts carried the client's request id to their provider.
    assert "req-hedge" in primary.stats()["requestIds"] and "req-hedge" in secondary.stats()["requestIds"]


def test_responses_and_messages_get_the_same_spans_as_chat(spans, primary, anthropic_sim):
    """Issue 15: /v1/responses (native to OpenAI, then translated to Anthropic after a 503)
    and a streamed /v1/messages (translated to OpenAI) produce the request and attempt spans of chat."""
    cfg = {"providers": [
        {"name": "openai", "type": "openai", "baseURL": primary.v1, "apiKey": {"value": "sk-o-SECRET"}},
        {"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url, "apiKey": {"value": "sk-a-SECRET"}}],
        "routes": [{"name": "mixed", "match": {"models": ["m"]}, "retry": {"attempts": 1},
                    "targets": [{"provider": "openai", "model": "gpt-4o"},
                                {"provider": "claude", "model": "claude-x", "priority": 1}]}]}
    primary.faults(status=503, count=1)
    with ProxyServer(cfg) as proxy:
        r = httpx.post(proxy.v1 + "/responses", json={"model": "m", "input": "hi"}, timeout=10,
                       headers={"x-request-id": "req-resp"})
        assert r.status_code == 200 and r.headers["x-detour-target"] == "claude/claude-x"
        r = httpx.post(proxy.url + "/v1/messages", timeout=10, headers={"x-request-id": "req-msg"},
                       json={"model": "m", "max_tokens": 10, "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.headers["x-detour-target"] == "openai/gpt-4o"
    finished = spans.get_finished_spans()
    requests = {s.attributes["detour.request_id"]: s for s in finished if s.name.startswith("detour chat")}
    assert set(requests) == {"req-resp", "req-msg"}
    for rid, target, results in (("req-resp", "claude/claude-x", ["http_5xx", "success"]),
                                 ("req-msg", "openai/gpt-4o", ["success"])):
        req = requests[rid]
        assert req.attributes["detour.route"] == "mixed" and req.attributes["detour.target"] == target
        assert req.attributes["detour.outcome"] == "success" and req.attributes["http.response.status_code"] == 200
        assert req.attributes["detour.attempts"] == len(results)
        mine = sorted((a for a in finished if a.name == "detour attempt" and a.parent.span_id == req.context.span_id),
                      key=lambda a: a.attributes["detour.attempt"])
        assert [a.attributes["detour.result"] for a in mine] == results
    assert requests["req-msg"].attributes["detour.stream"] is True


def test_no_spans_after_disable(spans, primary, secondary):
    tracing.disable()
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        assert httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10).status_code == 200
    assert spans.get_finished_spans() == ()


def test_off_by_default_serving_imports_no_opentelemetry(tmp_path, primary, secondary):
    # The real CLI, serving traffic with tracing off, reports which opentelemetry modules are
    # loaded once it is set up and again on exit. FastAPI >= 0.16x itself imports the
    # opentelemetry *API* (its native telemetry, which create_app turns off): Detour must add
    # nothing to that, neither at start nor while serving, and never load the SDK or an exporter.
    wrapper = ("import sys\n"
               "otel = lambda: sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')\n"
               "from detour_proxy import cli, tracing\n"
               "import fastapi\n"
               "orig = tracing.setup_from_env\n"
               "def setup(*a):\n"
               "    on = orig(*a)\n"
               "    print('OTEL_AT_START=' + ','.join(otel()) + ' ON=' + str(on), file=sys.stderr, flush=True)\n"
               "    return on\n"
               "tracing.setup_from_env = setup\n"
               "try:\n"
               "    cli.main(sys.argv[1:])\n"
               "finally:\n"
               "    print('OTEL_AT_EXIT=' + ','.join(otel()) + ' ON=' + str(tracing.enabled()), file=sys.stderr, flush=True)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proxy = ProxyProcess(write_config(tmp_path, primary, secondary), env=env,
                         cmd=[sys.executable, "-c", wrapper])
    try:
        auth = {"authorization": f"Bearer {CLIENT_KEY}"}
        for b in (body(), body(stream=True), body("down-model")):
            with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=b, headers=auth, timeout=10) as r:
                r.read()
                assert r.status_code in (200, 502)
    finally:
        proxy.proc.send_signal(signal.SIGINT)    # SIGINT: Python unwinds, so `finally` reports
        try:
            proxy.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.proc.kill()
        proxy.stop()
    start = [line.split("=", 1)[1] for line in proxy.stderr if line.startswith("OTEL_AT_START=")]
    end = [line.split("=", 1)[1] for line in proxy.stderr if line.startswith("OTEL_AT_EXIT=")]
    assert len(start) == 1 and len(end) == 1, proxy.stderr
    assert start[0].endswith(" ON=False") and end[0].endswith(" ON=False")
    assert start == end, "serving requests imported opentelemetry modules"
    assert "opentelemetry.sdk" not in end[0] and "opentelemetry.exporter" not in end[0]
    # What is loaded is exactly what FastAPI imports on its own (nothing from Detour).
    baseline = subprocess.run([sys.executable, "-c", "import sys, fastapi, fastapi.telemetry._asgi, "
                               "fastapi.telemetry._runtime; print(','.join(sorted(m for m in sys.modules "
                               "if m.split('.')[0] == 'opentelemetry')))"],
                              capture_output=True, text=True, timeout=30, env=env).stdout.strip()
    assert set(filter(None, end[0].rsplit(" ON=", 1)[0].split(","))) <= set(filter(None, baseline.split(",")))


def test_setup_from_env_needs_an_endpoint_and_the_exporter(monkeypatch, caplog):
    assert tracing.setup_from_env({}) is False
    assert tracing.setup_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                                   "OTEL_SDK_DISABLED": "true"}) is False
    # Endpoint set, exporter package missing: a warning, tracing stays off.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with caplog.at_level("WARNING", logger="detour.tracing"):
        assert tracing.setup_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) is False
    assert "tracing stays off" in caplog.text and not tracing.enabled()
    # Endpoint set, exporter present (a stand-in that keeps spans in memory): on.
    exporter = InMemorySpanExporter()
    fake = type(sys)("fake_otlp")
    fake.OTLPSpanExporter = lambda: exporter
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", fake)
    try:
        assert tracing.setup_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
        assert tracing.enabled()
    finally:
        tracing.disable()
