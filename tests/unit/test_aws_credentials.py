"""`AwsCredentials` (issue 16): a bedrock provider's AWS credentials are resolved in a thread,
never on a request's path; temporary ones are refreshed ahead of expiry and kept through a
failed refresh while valid; a failure is logged without secrets. A fake resolver and clock:
the real chain (env, shared file + profile, web identity through STS) runs against the
simulator in tests/integration/test_bedrock_credentials.py."""

from __future__ import annotations

import logging
import threading

from detour_proxy.adapters.bedrock import AwsKey
from detour_proxy.transport.aws_auth import AwsCredentials


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Resolver:
    """botocore's chain: blocks until the test lets it go (a slow STS), then returns session credentials."""

    def __init__(self, clock: Clock, lifetime: float | None = 3600.0) -> None:
        self.clock, self.lifetime = clock, lifetime
        self.calls = 0
        self.fail: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.done = threading.Event()

    def __call__(self, profile):
        assert self.gate.wait(5)
        self.calls += 1
        try:
            if self.fail is not None:
                raise self.fail
            key = AwsKey.of(f"ASIA{self.calls}", f"secret-{self.calls}", f"token-{self.calls}")
            return key, (None if self.lifetime is None else self.clock() + self.lifetime)
        finally:
            self.done.set()


def make(lifetime=3600.0):
    clock = Clock()
    resolver = Resolver(clock, lifetime)
    scheduled = []
    creds = AwsCredentials(None, clock=clock, name="b", resolve=resolver,
                           schedule=lambda delay, fn: scheduled.append(delay))
    return clock, resolver, creds, scheduled


def settle(creds, resolver):
    assert resolver.done.wait(5)
    for _ in range(500):
        if not creds._inflight:
            return
        threading.Event().wait(0.002)


def test_refreshed_ahead_of_expiry_without_blocking_a_request():
    clock, resolver, creds, _ = make()
    creds.start()
    assert creds.wait(5) and creds.get().access_key == "ASIA1"
    settle(creds, resolver)
    clock.now += 3600 - 899          # under 15 minutes before expiry: still the old one, a refresh starts
    resolver.done.clear()
    resolver.gate.clear()            # STS is slow now
    assert creds.get().access_key == "ASIA1"   # returned at once, while the refresh waits
    assert creds.get().access_key == "ASIA1"
    resolver.gate.set()
    settle(creds, resolver)
    assert creds.get().access_key == "ASIA2" and resolver.calls == 2


def test_a_failed_refresh_keeps_valid_credentials_and_logs_no_secret(caplog):
    clock, resolver, creds, scheduled = make()
    creds.start()
    assert creds.wait(5)
    settle(creds, resolver)
    clock.now += 3000
    resolver.done.clear()
    resolver.fail = RuntimeError("STS said no to secret-1")
    with caplog.at_level(logging.WARNING, "detour.aws_auth"):
        creds.get()
        settle(creds, resolver)
    assert creds.get().access_key == "ASIA1" and scheduled == [1.0]
    assert "STS said no" in caplog.text and "secret-1" not in caplog.text
    clock.now += 700                 # past expiry: no credentials, never stale ones
    resolver.done.clear()
    assert creds.get() is None


def test_long_lived_credentials_are_looked_up_again_for_rotation():
    clock, resolver, creds, _ = make(lifetime=None)
    creds.start()
    assert creds.wait(5)
    settle(creds, resolver)
    clock.now += 299
    assert creds.get().access_key == "ASIA1" and resolver.calls == 1
    clock.now += 2
    resolver.done.clear()
    creds.get()
    settle(creds, resolver)
    assert creds.get().access_key == "ASIA2"
