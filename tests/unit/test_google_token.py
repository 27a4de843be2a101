"""`GoogleToken` (issue 16): a vertex provider's access token is fetched and refreshed in a
thread, never on a request's path; refreshed ahead of expiry; kept through a failed refresh
while it is valid; re-read when its credentials file changes. Fake credentials and a fake
clock: the real token flows run against the simulator in tests/integration/test_google_providers.py."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from detour_proxy.transport import google_auth
from detour_proxy.transport.google_auth import GoogleToken


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeCreds:
    """google-auth credentials: `refresh` blocks until the test lets it go (a slow token endpoint)."""

    def __init__(self, clock: Clock, lifetime: float = 3600.0, name: str = "t") -> None:
        self.clock, self.lifetime, self.name = clock, lifetime, name
        self.token: str | None = None
        self.expiry: dt.datetime | None = None
        self.calls = 0
        self.fail: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def refresh(self, request) -> None:
        self.entered.set()
        assert self.gate.wait(5)
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        self.token = f"ya29.{self.name}-{self.calls}"
        self.expiry = dt.datetime.fromtimestamp(self.clock() + self.lifetime, dt.timezone.utc).replace(tzinfo=None)


@pytest.fixture()
def setup(monkeypatch, tmp_path):
    clock = Clock()
    creds = {"current": FakeCreds(clock)}
    loads = []

    def from_file(path, scopes):
        loads.append(path)
        return creds["current"]

    monkeypatch.setattr(google_auth, "_from_file", from_file)
    key = tmp_path / "sa.json"
    key.write_text("{}")
    scheduled: list = []

    def token(**kw) -> GoogleToken:
        return GoogleToken(str(key), clock=clock, name="v", schedule=lambda d, fn: scheduled.append((d, fn)), **kw)
    return clock, creds, loads, token, scheduled


def _settled(token: GoogleToken) -> None:
    """Wait for the refresh thread in flight (if any) to finish."""
    for t in threading.enumerate():
        if t.name.startswith("google-token-"):
            t.join(5)


def test_a_request_never_waits_for_the_token_endpoint(setup):
    clock, creds, _, make, _ = setup
    creds["current"].gate.clear()                 # the token endpoint hangs
    token = make()
    token.start()
    assert creds["current"].entered.wait(5)
    assert token.get() is None                    # at once: the target is skipped, not waited for
    creds["current"].gate.set()
    assert token.wait(5) and token.get() == "ya29.t-1"


def test_refreshed_ahead_of_expiry_and_the_old_token_serves_meanwhile(setup):
    clock, creds, _, make, scheduled = setup
    token = make()
    token.start()
    assert token.wait(5) and token.get() == "ya29.t-1"
    clock.now += 3600 - 301                       # not yet 5 min before expiry: no refresh
    assert token.get() == "ya29.t-1" and creds["current"].calls == 1
    creds["current"].gate.clear()
    clock.now += 2                                # inside the 5 min margin: a refresh starts...
    assert token.get() == "ya29.t-1"              # ...and the current token still serves
    assert creds["current"].entered.wait(5)
    creds["current"].gate.set()
    _settled(token)
    assert token.get() == "ya29.t-2" and token.refreshes == 2


def test_short_lived_tokens_refresh_at_half_life_and_are_not_sent_near_expiry(setup):
    clock, creds, _, make, _ = setup
    creds["current"].lifetime = 8.0
    token = make()
    token.start()
    assert token.wait(5)
    creds["current"].fail = RuntimeError("endpoint down")
    clock.now += 4.5                               # past half life: refresh tried, fails
    assert token.get() == "ya29.t-1"
    _settled(token)
    assert token.problem.startswith("RuntimeError")
    clock.now += 1.6                               # within the guard (a quarter of 8 s) of expiry
    assert token.get() is None                     # never sent about to expire


def test_a_failed_refresh_keeps_the_valid_token_and_backs_off(setup):
    clock, creds, _, make, scheduled = setup
    token = make()
    token.start()
    assert token.wait(5)
    creds["current"].fail = RuntimeError("invalid_grant for ya29.t-1")
    clock.now += 3500
    assert token.get() == "ya29.t-1"
    _settled(token)
    assert "ya29.t-1" not in token.problem         # the token never reaches a log line
    calls = creds["current"].calls
    token.get()                                    # within the backoff: no new attempt
    _settled(token)
    assert creds["current"].calls == calls
    assert [round(d, 3) for d, _ in scheduled] == [1.0]   # a background retry 1 s later
    scheduled[0][1]()                              # it fails again: the next one waits 2 s
    _settled(token)
    assert creds["current"].calls == calls + 1 and [round(d, 3) for d, _ in scheduled] == [1.0, 2.0]
    creds["current"].fail = None
    clock.now += 2.1
    token.get()                                    # a request after the backoff retries too
    _settled(token)
    assert token.get() == "ya29.t-4" and token.problem is None


def test_a_changed_credentials_file_is_read_again(setup):
    clock, creds, loads, make, _ = setup
    token = make()
    token.start()
    assert token.wait(5)
    assert len(loads) == 1
    creds["current"] = FakeCreds(clock, name="rotated")
    token.refresh()                                 # what the reload watcher calls on a change
    _settled(token)
    assert len(loads) == 2 and token.get() == "ya29.rotated-1"
    assert "sa.json" in repr(token) and "ya29" not in repr(token)
