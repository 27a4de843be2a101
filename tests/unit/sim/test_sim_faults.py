"""Fault injection, over real HTTP. Waits use /_sim/wait (event-driven), never sleeps."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import openai
import orjson
import pytest

from detour_sim.text import DEFAULT_REPLY

CHAT = "/v1/chat/completions"


async def test_status_with_retry_after_and_rate_limit_headers(oai, helpers):
    await oai.faults({"status": 429, "retryAfter": "2", "retryAfterMs": 1500,
                      "rateLimit": {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "5s"}})
    async with await oai.post(CHAT, helpers.chat_body(), headers={"x-request-id": "q1"}) as r:
        assert r.status == 429
        assert r.headers["retry-after"] == "2" and r.headers["retry-after-ms"] == "1500"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-request-id"] == "q1"
        err = (await r.json())["error"]
        assert err["code"] == "rate_limit_exceeded" and err["message"]
    assert (await oai.stats())["faultsInjected"] == 1


async def test_status_error_type_override_anthropic_shape(ant, helpers):
    async with await ant.post("/v1/messages", helpers.messages_body(),
                              fault={"status": 503, "errorType": "api_error", "errorMessage": "down"}) as r:
        assert r.status == 503
        assert await r.json() == {"type": "error", "error": {"type": "api_error", "message": "down"},
                                  "request_id": r.headers["request-id"]}


async def test_rate_limit_headers_on_success(oai, helpers):
    async with await oai.post(CHAT, helpers.chat_body(), fault={"rateLimit": {"x-ratelimit-remaining-tokens": "7"}}) as r:
        assert r.status == 200 and r.headers["x-ratelimit-remaining-tokens"] == "7"


async def test_openai_sdk_sees_status_as_typed_error(oai):
    await oai.faults({"status": 500})
    async with openai.AsyncOpenAI(base_url=oai.url + "/v1", api_key="x", max_retries=0) as c:
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


async def test_reset_before_response(oai, helpers):
    with pytest.raises(aiohttp.ClientConnectionError):
        async with await oai.post(CHAT, helpers.chat_body(), fault={"reset": True}) as r:
            await r.read()
    # the sim itself is fine afterwards
    async with await oai.post(CHAT, helpers.chat_body()) as r:
        assert r.status == 200


async def test_reset_after_chunks(oai, helpers):
    async with await oai.post(CHAT, helpers.chat_body(stream=True), fault={"resetAfterChunks": 3}) as r:
        assert r.status == 200
        events = []
        with pytest.raises(aiohttp.ClientPayloadError):
            while True:
                ev = await r.content.readuntil(b"\n\n")
                if not ev:
                    break
                events.append(ev)
    assert helpers.oai_content(events) == "The quick brown fox"
    assert (await oai.wait("streamsReset"))["streamsCompleted"] == 0


@pytest.mark.parametrize("n,expected", [(2, "The quick brown"), (0, ""), (99, DEFAULT_REPLY)])
async def test_cut_after_chunks_ends_cleanly_without_done(oai, helpers, n, expected):
    async with await oai.post(CHAT, helpers.chat_body(stream=True), fault={"cutAfterChunks": n}) as r:
        body = await r.read()  # no exception: the chunked body is terminated properly
    assert b"[DONE]" not in body and b"finish_reason\":\"stop" not in body
    assert helpers.oai_content(body.split(b"\n\n")) == expected
    stats = await oai.stats()
    assert stats["streamsCut"] == 1 and stats["streamsCompleted"] == 0


async def test_cut_anthropic_has_no_message_stop(ant, helpers):
    async with await ant.post("/v1/messages", helpers.messages_body(stream=True), fault={"cutAfterChunks": 1}) as r:
        body = await r.read()
    assert body.count(b"event: content_block_delta") == 1 and b"message_stop" not in body


@pytest.mark.parametrize("flavor,path", [("openai", CHAT), ("anthropic", "/v1/messages")])
async def test_stall_then_client_close_is_counted(make_sim, helpers, flavor, path):
    sim = await make_sim(flavor, "st")
    body = helpers.chat_body(stream=True) if flavor == "openai" else helpers.messages_body(stream=True)
    resp = await sim.post(path, body, fault={"stallAfterChunks": 2})
    preamble = 1 if flavor == "openai" else 3
    events = await helpers.read_events(resp, limit=preamble + 2)
    assert len(events) == preamble + 2
    await sim.wait("streamsStalled")
    assert (await sim.stats())["inFlight"] == 1
    resp.close()  # drop the connection mid-stream
    t0 = time.monotonic()
    stats = await sim.wait("streamsClientClosed", timeout=5)
    assert time.monotonic() - t0 < 1.0, "disconnect must be noticed promptly"
    assert stats["streamsCompleted"] == 0
    await sim.wait("requests" + "." + path)  # sanity: per-path key works
    assert sim.sim.stats.in_flight == 0


async def test_client_close_during_chunk_delay_is_counted(oai, helpers):
    resp = await oai.post(CHAT, helpers.chat_body(stream=True), fault={"chunkDelay": 5})
    await helpers.read_events(resp, limit=2)  # role + first content chunk
    resp.close()
    await oai.wait("streamsClientClosed", timeout=3)


async def test_inband_error_openai(oai, helpers):
    async with await oai.post(CHAT, helpers.chat_body(stream=True),
                              fault={"inbandError": {"afterChunks": 2, "type": "server_error"}}) as r:
        events = (await r.read()).split(b"\n\n")
    assert helpers.oai_content(events) == "The quick brown"
    err = [orjson.loads(e[6:]) for e in events if e.startswith(b'data: {"error"')]
    assert err[0]["error"]["type"] == "server_error"
    assert b"[DONE]" not in b"".join(events)


async def test_inband_error_before_first_delta_anthropic(ant, helpers):
    async with await ant.post("/v1/messages", helpers.messages_body(stream=True),
                              fault={"inbandError": {"afterChunks": 0, "type": "overloaded_error"}}) as r:
        body = await r.read()
    assert b"content_block_delta" not in body
    assert b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"' in body


async def test_inband_error_raises_in_openai_sdk(oai):
    await oai.faults({"inbandError": {"afterChunks": 1}})
    async with openai.AsyncOpenAI(base_url=oai.url + "/v1", api_key="x", max_retries=0) as c:
        stream = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass


async def test_malformed_body(oai, helpers):
    async with await oai.post(CHAT, helpers.chat_body(), fault={"malformed": "body"}) as r:
        assert r.status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(await r.read())


async def test_malformed_sse(oai, helpers):
    async with await oai.post(CHAT, helpers.chat_body(stream=True),
                              fault={"malformed": "sse", "malformedAfterChunks": 1}) as r:
        events = (await r.read()).split(b"\n\n")
    bad = [e for e in events if e.startswith(b"data: {")]
    broken = []
    for e in bad:
        try:
            orjson.loads(e[6:])
        except orjson.JSONDecodeError:
            broken.append(e)
    assert len(broken) == 1
    assert helpers.oai_content(events) == DEFAULT_REPLY  # everything else is intact


async def test_count_applies_to_next_n_then_clears(oai, helpers):
    await oai.faults({"status": 500, "count": 2})
    statuses = []
    for _ in range(3):
        async with await oai.post(CHAT, helpers.chat_body()) as r:
            statuses.append(r.status)
    assert statuses == [500, 500, 200]
    status, body = await oai.admin("GET", "/_sim/faults")
    assert body == {"active": False, "rules": []}


async def test_rate_is_reproducible_with_seed(oai, helpers):
    await oai.faults({"status": 503, "rate": 0.5, "seed": 7})
    rng = random.Random(7)
    expected = [503 if rng.random() < 0.5 else 200 for _ in range(20)]
    got = []
    for _ in range(20):
        async with await oai.post(CHAT, helpers.chat_body()) as r:
            got.append(r.status)
    assert got == expected and 0 < got.count(503) < 20
    assert (await oai.stats())["faultsInjected"] == got.count(503)


async def test_paths_filter(oai, helpers):
    await oai.faults({"status": 500, "paths": ["/v1/embeddings"]})
    async with await oai.post(CHAT, helpers.chat_body()) as r:
        assert r.status == 200
    async with await oai.post("/v1/embeddings", {"model": "e", "input": "x"}) as r:
        assert r.status == 500


async def test_keys_and_models_filters(oai, ant, helpers):
    """A rule with `keys` hits only requests sent with those keys (OpenAI bearer, Anthropic x-api-key)."""
    await oai.faults([{"status": 401, "keys": ["sk-revoked"]}, {"status": 429, "retryAfter": "5", "keys": ["sk-busy"]}])
    for key, status in (("sk-revoked", 401), ("sk-busy", 429), ("sk-good", 200), (None, 200)):
        hdrs = {"authorization": f"Bearer {key}"} if key else {}
        async with await oai.post(CHAT, helpers.chat_body(), headers=hdrs) as r:
            assert r.status == status, key
    await ant.faults({"status": 403, "keys": ["sk-ant-x"]})
    for key, status in (("sk-ant-x", 403), ("sk-ant-y", 200)):
        body = helpers.messages_body()
        async with await ant.post("/v1/messages", body, headers={"x-api-key": key, "anthropic-version": "2023-06-01"}) as r:
            assert r.status == status, key
    assert (await oai.admin("PUT", "/_sim/faults", {"status": 401, "keys": []}))[0] == 400
    # `models`: one model of the provider fails, the others answer
    await oai.faults({"status": 503, "models": ["gpt-4o-mini"]})
    for model, status in (("gpt-4o-mini", 503), ("gpt-4o", 200)):
        async with await oai.post(CHAT, helpers.chat_body(model=model)) as r:
            assert r.status == status, model


async def test_rule_list_first_match_wins(oai, helpers):
    await oai.faults([{"status": 502, "paths": ["/v1/models"]}, {"status": 504}])
    async with oai.http.get(oai.url + "/v1/models") as r:
        assert r.status == 502
    async with await oai.post(CHAT, helpers.chat_body()) as r:
        assert r.status == 504


async def test_header_fault_overrides_installed_rules(oai, helpers):
    await oai.faults({"status": 500})
    async with await oai.post(CHAT, helpers.chat_body(), fault={"status": 418}) as r:
        assert r.status == 418
    async with await oai.post(CHAT, helpers.chat_body(), headers={"x-sim-fault": "{bad"}) as r:
        assert r.status == 400


async def test_latency_and_ttft(oai, helpers):
    t0 = time.monotonic()
    async with await oai.post(CHAT, helpers.chat_body(), fault={"latency": 0.2}) as r:
        await r.read()
    assert time.monotonic() - t0 >= 0.2

    t0 = time.monotonic()
    resp = await oai.post(CHAT, helpers.chat_body(stream=True), fault={"ttft": 0.3})
    t_headers = time.monotonic() - t0
    events = await helpers.read_events(resp, limit=2)  # role chunk, first content chunk
    t_first = time.monotonic() - t0
    resp.close()
    assert t_headers < 0.25 <= 0.3 <= t_first
    assert helpers.oai_content(events) == "The quick"


async def test_chunk_delay_paces_stream(oai, helpers):
    t0 = time.monotonic()
    async with await oai.post(CHAT, helpers.chat_body(stream=True), fault={"chunkDelay": 0.03}) as r:
        body = await r.read()
    assert time.monotonic() - t0 >= 7 * 0.03
    assert helpers.oai_content(body.split(b"\n\n")) == DEFAULT_REPLY


@pytest.mark.parametrize("spec", [{"statuz": 500}, {"status": "500"}, {"rate": 2}, {"malformed": "xml"},
                                  {"inbandError": {"after": 1}}, {"count": 0}, {"paths": "/v1"}, [1]])
async def test_invalid_fault_specs_rejected(oai, spec):
    status, body = await oai.admin("PUT", "/_sim/faults", spec)
    assert status == 400 and body["error"]
    assert (await oai.admin("GET", "/_sim/faults"))[1]["active"] is False


async def test_faults_get_delete_and_reset(oai, helpers):
    body = await oai.faults({"status": 500, "count": 3})
    assert body == {"active": True, "rules": [{"status": 500, "count": 3, "remaining": 3}]}
    async with await oai.post(CHAT, helpers.chat_body()) as r:
        assert r.status == 500
    assert (await oai.admin("GET", "/_sim/faults"))[1]["rules"][0]["remaining"] == 2
    assert (await oai.admin("DELETE", "/_sim/faults"))[1]["active"] is False
    await oai.faults({"status": 500})
    status, stats = await oai.admin("POST", "/_sim/reset")
    assert status == 200 and stats["total"] == 0 and stats["requests"] == {} and stats["lastRequest"] is None
    assert (await oai.admin("GET", "/_sim/faults"))[1]["active"] is False


async def test_wait_long_poll(oai, helpers):
    waiter = asyncio.ensure_future(oai.wait("requests./v1/chat/completions", 2, timeout=5))
    for _ in range(2):
        async with await oai.post(CHAT, helpers.chat_body()) as r:
            await r.read()
    stats = await asyncio.wait_for(waiter, 5)
    assert stats["requests"]["/v1/chat/completions"] == 2 and stats["reached"] is True
    status, body = await oai.admin("GET", "/_sim/wait?key=total&atLeast=100&timeout=0.1")
    assert status == 408 and body["reached"] is False and body["value"] == 2
    status, _ = await oai.admin("GET", "/_sim/wait?key=nope&atLeast=1")
    assert status == 400
    # atMost: wait for a gauge to come back down
    resp = await oai.post(CHAT, helpers.chat_body(stream=True), fault={"stallAfterChunks": 0})
    await oai.wait("inFlight", 1)
    status, body = await oai.admin("GET", "/_sim/wait?key=inFlight&atMost=0&timeout=0.1")
    assert status == 408 and body["value"] == 1
    waiter = asyncio.ensure_future(oai.admin("GET", "/_sim/wait?key=inFlight&atMost=0&timeout=5"))
    resp.close()
    status, body = await asyncio.wait_for(waiter, 5)
    assert status == 200 and body["inFlight"] == 0
    assert oai.sim.stats._waiters == []



async def test_client_giving_up_during_latency_is_counted(oai, helpers):
    """A proxy that times out a slow upstream shows up as clientClosed (not as a stream)."""
    with pytest.raises(asyncio.TimeoutError):
        await oai.http.post(oai.url + CHAT, data=orjson.dumps(helpers.chat_body()),
                            headers={"x-sim-fault": '{"latency": 30}'},
                            timeout=aiohttp.ClientTimeout(total=0.2))
    stats = await oai.wait("clientClosed", timeout=3)
    assert stats["streamsStarted"] == 0 and stats["streamsClientClosed"] == 0
    assert stats["inFlight"] == 0
