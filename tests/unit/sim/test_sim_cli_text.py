"""The ``detour-sim`` process contract, and the canonical-text helpers."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from detour_sim.text import DEFAULT_REPLY, Canon, split_text

READY = re.compile(r"^detour-sim (\S+) \((openai|anthropic)\) listening on http://127\.0\.0\.1:(\d+)$")


async def _spawn(*argv: str) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    m = READY.match(line)
    assert m, f"unexpected readiness line {line!r}; stderr: {await proc.stderr.read()!r}"
    return proc, int(m.group(3))


async def _stop(proc: asyncio.subprocess.Process, sig: int) -> int:
    proc.send_signal(sig)
    return await asyncio.wait_for(proc.wait(), 10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_python_dash_m_port_zero_and_clean_exit(sig):
    proc, port = await _spawn(sys.executable, "-m", "detour_sim", "--flavor", "anthropic", "--name", "cli-a",
                              "--host", "127.0.0.1", "--port", "0", "--reply", "Hello there world", "--chunks", "3")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            body = {"model": "c", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "x"}]}
            async with s.post(f"http://127.0.0.1:{port}/v1/messages", json=body,
                              headers={"anthropic-version": "2023-06-01"}) as r:
                text = await r.text()
                assert r.headers["x-detour-sim"] == "cli-a"
        assert text.count("text_delta") == 3 and '"Hello"' in text and '" there"' in text
    finally:
        rc = await _stop(proc, sig)
    assert rc == 0


async def test_console_script_openai():
    script = Path(sys.executable).with_name("detour-sim")
    if not script.exists():
        pytest.skip("console script not installed")
    proc, port = await _spawn(str(script), "--flavor", "openai", "--name", "cli-o", "--port", "0")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            async with s.get(f"http://127.0.0.1:{port}/_sim/health") as r:
                info = await r.json()
        assert info["name"] == "cli-o" and info["flavor"] == "openai" and info["reply"] == DEFAULT_REPLY
    finally:
        assert await _stop(proc, signal.SIGTERM) == 0


def test_split_text_word_boundaries():
    assert split_text(DEFAULT_REPLY, 8) == ("The quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog.")
    assert split_text(DEFAULT_REPLY, 1) == (DEFAULT_REPLY,)
    assert split_text("", 4) == ()
    for n in range(1, 60):
        parts = split_text(DEFAULT_REPLY, n)
        assert "".join(parts) == DEFAULT_REPLY and all(parts)
        assert len(parts) == min(n, len(DEFAULT_REPLY))
    assert "".join(split_text("  padded  text  ", 3)) == "  padded  text  "


def test_canon_remainder():
    c = Canon(DEFAULT_REPLY, 8)
    assert c.remainder(None) == c.chunks and c.remainder("nope") == c.chunks
    assert c.remainder("The quick") == c.chunks[1:]
    assert c.remainder("The qu") == ("ick",) + c.chunks[1:]
    assert c.remainder(DEFAULT_REPLY) == ()
    for k in range(len(DEFAULT_REPLY) + 1):
        assert DEFAULT_REPLY[:k] + "".join(c.remainder(DEFAULT_REPLY[:k])) == DEFAULT_REPLY


async def test_sim_server_in_process():
    from detour_sim.runner import SimServer

    async with SimServer("openai", "inproc", chunks=2) as s:
        assert s.port > 0 and s.url == f"http://127.0.0.1:{s.port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
            async with http.post(s.url + "/v1/chat/completions", json=body) as r:
                text = await r.text()
        assert text.count('"content":"') == 3  # role chunk + 2 content chunks
        assert s.sim.stats.value("streamsCompleted") == 1
