"""Structured logs of the real `detour-proxy` process: one JSON line per request (info), one per
attempt (debug), the request id everywhere it belongs, and never a key, an Authorization
value or prompt text, including on error paths."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from detour_proxy.server import endpoints as handlers
from detour_proxy.logs import JsonFormatter
from support import OutputReaders, ProxyServer, chat_body, two_provider_config, wait_until
from test_metrics import scrape, val

PROVIDER_KEYS = ["sk-primary-CANARY-90ab", "sk-secondary-CANARY-77cd", "sk-dead-CANARY-12ef"]
CLIENT_KEY = "client-CANARY-3f1e"
WRONG_KEY = "wrong-CANARY-8c2d"
PROMPT = "PROMPT-CANARY-do-not-log-5b7a"


class ProxyProcess:
    """`python -m detour_proxy` on an ephemeral loopback port, output captured line by line."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None,
                 cmd: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*(cmd or [sys.executable, "-m", "detour_proxy"]), "--config", str(config), "--host", "127.0.0.1",
             "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._readers = OutputReaders(self.proc)
        self.stdout, self.stderr = self._readers.stdout, self._readers.stderr
        deadline = time.monotonic() + 15
        self.url = ""
        while not self.url:
            for line in list(self.stdout):
                m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
                if m:
                    self.url = m.group(1)
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"proxy did not start: {self.stdout} {self.stderr}")
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=5)
        self._readers.join(5)
        return rc


def write_config(tmp_path: Path, primary, secondary) -> Path:
    cfg = {
        "providers": [
            {"name": "primary", "type": "openai", "baseURL": primary.v1, "apiKey": {"value": PROVIDER_KEYS[0]}},
            {"name": "secondary", "type": "openai-compatible", "baseURL": secondary.v1,
             "apiKey": {"value": PROVIDER_KEYS[1]}},
            {"name": "dead", "type": "openai", "baseURL": "http://127.0.0.1:9/v1", "apiKey": {"value": PROVIDER_KEYS[2]}},
        ],
        "routes": [
            {"name": "chat", "match": {"models": ["gpt-4o-mini"]},
             "targets": [{"provider": "primary", "model": "gpt-4o-mini"},
                         {"provider": "secondary", "model": "llama-3-8b", "priority": 1}],
             "retry": {"attempts": 2, "backoff": {"initial": "10ms", "max": "20ms"}}, "timeout": "10s"},
            {"name": "down", "match": {"models": ["down-model"]},
             "targets": [{"provider": "dead", "model": "m"}],
             "retry": {"attempts": 2, "backoff": {"initial": "10ms", "max": "20ms"}}, "timeout": "5s"},
        ],
        "clientAuth": {"keys": [{"value": CLIENT_KEY}]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def body(model: str = "gpt-4o-mini", **extra) -> dict:
    return {"model": model, "messages": [{"role": "system", "content": PROMPT},
                                         {"role": "user", "content": PROMPT}], **extra}


def test_request_and_attempt_logs_are_json_with_request_ids_and_no_secrets(tmp_path, primary, secondary):
    primary.faults(status=503, errorMessage=f"overloaded while reading {PROMPT}")   # error paths log
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proxy = ProxyProcess(write_config(tmp_path, primary, secondary), "--log-level", "debug", env=env)
    responses: list[httpx.Response] = []
    try:
        auth = {"authorization": f"Bearer {CLIENT_KEY}"}
        with httpx.Client(base_url=proxy.url, timeout=15) as c:
            # 503 from the primary (retried), served by the secondary; our request id is kept.
            responses.append(c.post("/v1/chat/completions", json=body(), headers={**auth, "x-request-id": "req-log-1"}))
            # No request id: one is generated and returned.
            responses.append(c.post("/v1/chat/completions", json=body(), headers=auth))
            # A stream, failing over before its first token.
            with c.stream("POST", "/v1/chat/completions", json=body(stream=True),
                          headers={**auth, "x-request-id": "req-log-stream"}) as r:
                r.read()
                responses.append(r)
            # Every attempt a connect error: a 502 for the client.
            responses.append(c.post("/v1/chat/completions", json=body("down-model"),
                                    headers={**auth, "x-request-id": "req-log-down"}))
            # Rejected before routing: unknown model, bad client key, an id we do not accept.
            responses.append(c.post("/v1/chat/completions", json=body("no-such-model"),
                                    headers={**auth, "x-request-id": "req-log-404"}))
            responses.append(c.post("/v1/chat/completions", json=body(),
                                    headers={"authorization": f"Bearer {WRONG_KEY}", "x-request-id": "req-log-401"}))
            responses.append(c.post("/v1/chat/completions", json=body(),
                                    headers={**auth, "x-request-id": "bad id\twith spaces"}))
    finally:
        rc = proxy.stop()
    assert rc in (0, -signal.SIGTERM), proxy.stderr   # uvicorn re-raises SIGTERM after a clean shutdown
    assert [r.status_code for r in responses] == [200, 200, 200, 502, 404, 401, 200]

    records = []
    for line in proxy.stdout:
        assert line.startswith("{"), f"not a JSON log line: {line!r}"
        records.append(json.loads(line))
    for line in proxy.stderr:
        assert not line.strip() or line.startswith("{"), f"unstructured stderr: {line!r}"

    # Nothing secret anywhere: provider keys, client Authorization values, prompt contents.
    everything = "\n".join(proxy.stdout + proxy.stderr)
    for secret in [*PROVIDER_KEYS, CLIENT_KEY, WRONG_KEY, PROMPT, "CANARY", "Bearer"]:
        assert secret not in everything, f"{secret!r} was logged"

    access = [r for r in records if r.get("logger") == "detour.access"]
    attempts = [r for r in records if r.get("msg") == "attempt"]
    assert len(access) == len(responses)
    ids = [r.headers["x-request-id"] for r in responses]
    assert ids[0] == "req-log-1" and ids[2] == "req-log-stream" and ids[3] == "req-log-down"
    assert re.fullmatch(r"[0-9a-f]{32}", ids[1]) and re.fullmatch(r"[0-9a-f]{32}", ids[6])
    for resp, rid in zip(responses, ids):
        lines = [r for r in access if r["request_id"] == rid]
        assert len(lines) == 1, (rid, access)
        line = lines[0]
        assert line["level"] == "info" and line["msg"] == "request"
        for field in ("ts", "route", "target", "attempts", "status", "latency_ms", "outcome"):
            assert field in line, (field, line)
        assert line["status"] == resp.status_code
        assert isinstance(line["latency_ms"], (int, float)) and line["latency_ms"] >= 0
        mine = [a for a in attempts if a["request_id"] == rid]
        if resp.status_code in (404, 401):
            assert line["route"] is None and line["attempts"] == 0 and not mine
            continue
        assert line["attempts"] == int(resp.headers["x-detour-attempts"]) == len(mine)
        for a in mine:
            assert a["level"] == "debug" and a["route"] == line["route"]
            assert {"target", "attempt", "result", "status", "latency_ms"} <= set(a)
        if resp.status_code == 200:
            assert line["target"] == resp.headers["x-detour-target"] == mine[-1]["target"]
            assert mine[-1]["result"] == "success"

    first = next(r for r in access if r["request_id"] == "req-log-1")
    assert first["route"] == "chat" and first["target"] == "secondary/llama-3-8b" and first["attempts"] == 3
    assert [a["result"] for a in attempts if a["request_id"] == "req-log-1"] == ["http_5xx", "http_5xx", "success"]
    down = next(r for r in access if r["request_id"] == "req-log-down")
    assert down["outcome"] == "upstream_error" and down["target"] == "dead/m"
    assert {a["result"] for a in attempts if a["request_id"] == "req-log-down"} == {"connect"}
    # Every line about a request (access and attempt lines) names it.
    for r in records:
        if r.get("logger") in ("detour.access", "detour.executor"):
            assert r.get("request_id"), r
    # The request id reached the providers too.
    assert {"req-log-1", "req-log-stream"} <= set(primary.stats()["requestIds"])
    assert {"req-log-1", ids[1], "req-log-stream"} <= set(secondary.stats()["requestIds"])


def test_info_level_has_request_lines_but_no_attempt_lines(tmp_path, primary, secondary):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proxy = ProxyProcess(write_config(tmp_path, primary, secondary), env=env)
    try:
        r = httpx.post(proxy.url + "/v1/chat/completions", json=body(), timeout=10,
                       headers={"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": "req-info-1"})
        assert r.status_code == 200
    finally:
        assert proxy.stop() in (0, -signal.SIGTERM)
    records = [json.loads(line) for line in proxy.stdout]
    assert [x["request_id"] for x in records if x.get("msg") == "request"] == ["req-info-1"]
    assert not [x for x in records if x["level"] == "debug"]


# -- in-process: the request paths that end without a normal reply -----------------------------

def _access(caplog, request_id: str | None = None) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "detour.access"
            and (request_id is None or r.fields["request_id"] == request_id)]


def test_client_gone_before_its_body_is_logged_and_counted(caplog, primary, secondary):
    caplog.set_level(logging.INFO, logger="detour.access")
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: detour\r\ncontent-type: application/json\r\n"
                         b"x-request-id: req-gone-early\r\ncontent-length: 1000\r\n\r\n{\"model\": \"gpt-4o-mini\"")
        line = wait_until(lambda: _access(caplog, "req-gone-early"), 5, "the access line")[0]
        _, s = scrape(proxy)
    assert line["outcome"] == "cancelled" and line["status"] == 499
    assert line["route"] is None and line["attempts"] == 0
    assert val(s, "detour_rejected_requests_total", status="499") == 1
    assert primary.requests() == 0


def test_internal_error_is_an_openai_500_logged_once_without_details(caplog, monkeypatch, primary, secondary):
    async def broken_unary(state, ctx):
        raise RuntimeError(f"bug while handling {PROMPT} with {PROVIDER_KEYS[0]}")

    async def broken_after_start(state, ctx, send):   # the stream already started: end it with an error
        ctx.status = 200                                  # as streaming.Relay.start records it
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'data: {"choices": []}\n\n', "more_body": True})
        raise KeyError(PROMPT)

    monkeypatch.setattr(handlers, "run_unary", broken_unary)
    monkeypatch.setattr(handlers, "run_stream", broken_after_start)
    caplog.set_level(logging.INFO)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        c = openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as exc:
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}],
                                      extra_headers={"x-request-id": "req-bug-1"})
        resp = exc.value.response
        with httpx.stream("POST", proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10,
                          headers={"x-request-id": "req-bug-2"}) as r:
            streamed = r.read().decode()
        # The gateway keeps serving.
        assert httpx.get(proxy.url + "/healthz", timeout=5).status_code == 200
        _, s = scrape(proxy)
    assert resp.status_code == 500 and resp.headers["x-request-id"] == "req-bug-1"
    err = resp.json()["error"]
    assert err["type"] == "internal_error" and err["code"] == "internal_error" and "req-bug-1" in err["message"]
    assert r.status_code == 200 and "event: error" in streamed and '"internal_error"' in streamed
    assert not streamed.rstrip().endswith("[DONE]")
    for text in (resp.text, streamed):
        assert "Traceback" not in text and "CANARY" not in text and "RuntimeError" not in text
    assert [(x["status"], x["outcome"]) for x in _access(caplog, "req-bug-1")] == [(500, "error")]
    assert [(x["status"], x["outcome"]) for x in _access(caplog, "req-bug-2")] == [(200, "error")]
    assert val(s, "detour_requests_total", route="chat", outcome="error") == 2
    assert val(s, "detour_requests_total", route="chat", outcome="cancelled") == 0
    # Logged once per request, with the exception's type and frames, never its message.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.fields["request_id"], r.fields["error_type"]) for r in errors] == [
        ("req-bug-1", "RuntimeError"), ("req-bug-2", "KeyError")], [r.getMessage() for r in errors]
    assert "broken_unary" in errors[0].fields["traceback"]
    logged = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "CANARY" not in logged
