"""The OpenAI surface: bad input gets an accurate status in the OpenAI error format."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import openai
import pytest

from detour_proxy.server import endpoints as handlers
from support import ProxyServer, chat_body, two_provider_config
from test_metrics import scrape, val


@pytest.fixture()
def proxy(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["server"] = {"maxBodyBytes": 4096}
    cfg["routes"].append({"name": "embed", "match": {"models": ["text-embedding-3-small"]},
                          "targets": [{"provider": "primary", "model": "text-embedding-3-small"}]})
    with ProxyServer(cfg) as p:
        yield p


def post(proxy, content: bytes | None = None, json=None, path="/chat/completions", **kw):
    return httpx.post(proxy.v1 + path, content=content, json=json, timeout=10, **kw)


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    return err


def test_malformed_json_is_400(proxy):
    assert_openai_error(post(proxy, b'{"model": "gpt-4o-mini", "messages": [', headers={"content-type": "application/json"}), 400, "invalid_json")


def test_invalid_utf8_is_400(proxy):
    assert_openai_error(post(proxy, b'{"model": "\xff\xfe", "messages": []}'), 400)


def test_missing_model_is_400(proxy):
    err = assert_openai_error(post(proxy, json={"messages": [{"role": "user", "content": "x"}]}), 400)
    assert err["param"] == "model"


def test_missing_messages_is_400(proxy):
    err = assert_openai_error(post(proxy, json={"model": "gpt-4o-mini"}), 400)
    assert err["param"] == "messages"


def test_body_not_an_object_is_400(proxy):
    assert_openai_error(post(proxy, json=[1, 2]), 400)


def test_unknown_model_is_404(proxy):
    assert_openai_error(post(proxy, json=chat_body("no-such-model")), 404, "model_not_found")
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=proxy.v1, api_key="x", max_retries=0).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}])


def test_glob_route_matches(proxy, primary):
    r = post(proxy, json=chat_body("chat-anything"))
    assert r.status_code == 200
    assert r.headers["x-detour-target"] == "primary/gpt-4o-mini"


def test_body_over_limit_is_413(proxy):
    big = chat_body(text="x" * 10_000)
    assert_openai_error(post(proxy, json=big), 413, "request_too_large")
    assert val(scrape(proxy)[1], "detour_rejected_requests_total", status="413") == 1


def test_body_over_limit_without_content_length_is_413(proxy):
    def gen():
        for _ in range(10):
            yield b" " * 1000
    assert_openai_error(post(proxy, gen()), 413, "request_too_large")
    assert val(scrape(proxy)[1], "detour_rejected_requests_total", status="413") == 1


def test_body_too_slow_is_408(proxy, monkeypatch):
    monkeypatch.setattr(handlers, "BODY_READ_TIMEOUT", 0.3)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: detour\r\ncontent-type: application/json\r\n"
                     b"content-length: 100\r\n\r\n{\"model\"")          # ...and the rest never comes
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b'"code":"request_timeout"' in payload
    _, s = scrape(proxy)
    assert val(s, "detour_rejected_requests_total", status="408") == 1
    assert val(s, "detour_requests_total", route="chat", outcome="client_error") == 0


def test_embeddings(proxy):
    c = openai.OpenAI(base_url=proxy.v1, api_key="x", max_retries=0)
    res = c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(res.data) == 2 and res.data[0].embedding


def test_models_lists_routed_models(proxy):
    ids = [m.id for m in openai.OpenAI(base_url=proxy.v1, api_key="x").models.list()]
    assert ids == ["gpt-4o-mini", "text-embedding-3-small"]


def test_health_ready_and_metrics(proxy):
    assert httpx.get(proxy.url + "/healthz").status_code == 200
    ready = httpx.get(proxy.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["configHash"] == proxy.state.gateway.hash
    post(proxy, json=chat_body())
    text = httpx.get(proxy.url + "/metrics").text
    assert 'detour_requests_total{outcome="success",route="chat"} 1.0' in text
    assert "SECRET" not in text


def test_models_needs_the_client_key_when_client_auth_is_set(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["clientAuth"] = {"keys": [{"value": "client-key-1"}]}
    with ProxyServer(cfg) as p:
        assert_openai_error(httpx.get(p.v1 + "/models", timeout=5), 401, "invalid_api_key")
        assert_openai_error(httpx.get(p.v1 + "/models", headers={"authorization": "Bearer wrong"}, timeout=5), 401)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=p.v1, api_key="wrong", max_retries=0).models.list()
        ids = [m.id for m in openai.OpenAI(base_url=p.v1, api_key="client-key-1", max_retries=0).models.list()]
        assert ids == ["gpt-4o-mini"]
        assert val(scrape(p)[1], "detour_rejected_requests_total", status="401") == 3


def test_client_keys_from_env_and_file(primary, secondary, tmp_path, monkeypatch):
    monkeypatch.setenv("DETOUR_TEST_CLIENT_KEY", "client-key-from-env")
    key_file = tmp_path / "client-key"
    key_file.write_text("client-key-from-file\n")
    cfg = two_provider_config(primary, secondary)
    cfg["clientAuth"] = {"keys": [{"env": "DETOUR_TEST_CLIENT_KEY"}, {"file": str(key_file)}]}
    with ProxyServer(cfg) as p:
        for key in ("client-key-from-env", "client-key-from-file"):
            c = openai.OpenAI(base_url=p.v1, api_key=key, max_retries=0)
            assert c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
            assert [m.id for m in c.models.list()] == ["gpt-4o-mini"]
        for wrong in ("DETOUR_TEST_CLIENT_KEY", str(key_file), "client-key-from"):
            assert_openai_error(post(p, json=chat_body(), headers={"authorization": f"Bearer {wrong}"}), 401)


def test_client_auth(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["clientAuth"] = {"keys": [{"value": "client-key-1"}]}
    with ProxyServer(cfg) as p:
        assert_openai_error(post(p, json=chat_body()), 401, "invalid_api_key")
        assert_openai_error(post(p, json=chat_body(), headers={"authorization": "Bearer wrong"}), 401)
        ok = openai.OpenAI(base_url=p.v1, api_key="client-key-1", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert ok.choices[0].message.content
    # The provider receives the provider key, not the client's key.
    assert primary.stats()["lastRequest"]["headers"].get("authorization") != "Bearer client-key-1"


def test_invalid_config_is_rejected_at_start_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  - name: p\n    baseURL: http://127.0.0.1:1/v1\n"
                   "routes:\n  - name: r\n    targets: [{provider: p, model: m}]\n    timeout: soon\n")
    proc = subprocess.run([sys.executable, "-m", "detour_proxy", "--config", str(bad), "--port", "0"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "routes[0].timeout" in proc.stderr and "invalid duration" in proc.stderr


def test_unknown_paths_and_methods_answer_in_the_openai_error_format(proxy):
    """Issue 13: FastAPI's `{"detail": "Not Found"}` is no OpenAI error; SDKs read `error.message`."""
    for path in ("/v1/nope", "/v1/chat/completions/extra", "/nothing-here"):
        err = assert_openai_error(httpx.get(proxy.url + path, timeout=5), 404, "not_found")
        assert path in err["message"]
        assert_openai_error(httpx.post(proxy.url + path, json={}, timeout=5), 404, "not_found")
    for method, path, allow in (("GET", "/v1/chat/completions", "POST"), ("PUT", "/v1/embeddings", "POST"),
                                ("DELETE", "/v1/models", "GET"), ("POST", "/healthz", "GET"),
                                ("GET", "/v1/responses", "POST"), ("GET", "/v1/messages", "POST"),
                                ("PUT", "/chat/completions", "POST")):
        r = httpx.request(method, proxy.url + path, timeout=5)
        err = assert_openai_error(r, 405, "method_not_allowed")
        assert method in err["message"]
        assert r.headers["allow"] == allow
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=proxy.url + "/v2", api_key="x", max_retries=0).models.list()


def test_model_retrieve(proxy):
    c = openai.OpenAI(base_url=proxy.v1, api_key="x", max_retries=0)
    m = c.models.retrieve("gpt-4o-mini")
    assert (m.id, m.object) == ("gpt-4o-mini", "model")
    assert c.models.retrieve("text-embedding-3-small").id == "text-embedding-3-small"
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found"
    # A pattern route's glob is no model id; a long id is quoted cut.
    assert_openai_error(httpx.get(proxy.v1 + "/models/chat-*", timeout=5), 404, "model_not_found")
    err = assert_openai_error(httpx.get(proxy.v1 + "/models/" + "x" * 5000, timeout=5), 404)
    assert len(err["message"]) < 400


def test_docs_are_served_without_client_auth_only(primary, secondary, proxy):
    assert httpx.get(proxy.url + "/openapi.json", timeout=5).json()["info"]["title"] == "Detour"
    assert httpx.get(proxy.url + "/docs", timeout=5).status_code == 200
    cfg = two_provider_config(primary, secondary)
    cfg["clientAuth"] = {"keys": [{"value": "client-key-1"}]}
    with ProxyServer(cfg) as p:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            for headers in ({}, {"authorization": "Bearer client-key-1"}):
                assert_openai_error(httpx.get(p.url + path, headers=headers, timeout=5), 404, "not_found")
        c = openai.OpenAI(base_url=p.v1, api_key="client-key-1", max_retries=0)
        assert c.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=p.v1, api_key="wrong", max_retries=0).models.retrieve("gpt-4o-mini")
        # Without server.metricsAuth, /metrics stays open for the scraper.
        assert httpx.get(p.url + "/metrics", timeout=5).status_code == 200


def test_metrics_behind_client_keys_with_metrics_auth(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["clientAuth"] = {"keys": [{"value": "client-key-1"}]}
    cfg["server"] = {"metricsAuth": True}
    with ProxyServer(cfg) as p:
        assert_openai_error(httpx.get(p.url + "/metrics", timeout=5), 401, "invalid_api_key")
        assert_openai_error(httpx.get(p.url + "/metrics", headers={"authorization": "Bearer nope"}, timeout=5), 401)
        ok = httpx.get(p.url + "/metrics", headers={"authorization": "Bearer client-key-1"}, timeout=5)
        assert ok.status_code == 200 and "detour_rejected_requests_total" in ok.text
        assert httpx.get(p.url + "/healthz", timeout=5).status_code == 200   # probes need no key
        assert httpx.get(p.url + "/readyz", timeout=5).status_code == 200
