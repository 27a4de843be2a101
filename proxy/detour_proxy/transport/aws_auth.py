"""AWS credentials for `bedrock` providers, resolved and refreshed off the event loop.

botocore's credential chain does blocking I/O (shared files, an STS AssumeRoleWithWebIdentity
call for IRSA, the container / instance metadata services) and so does its refresh, so none
of it runs on a request's path: `AwsCredentials.get()` returns the cached credentials at once
(an `AwsKey`) and, past the refresh point, starts one resolution in a daemon thread. Requests
keep signing with the current credentials meanwhile; only when none are valid does `get()`
return None, and the bedrock adapter makes the target ineligible for that request (it falls
back; `TargetUnavailable`) instead of waiting.

The chain is botocore's own (`botocore.session.Session(profile=...)`): AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, the shared credentials and config files with
AWS_PROFILE (or the provider's `profile`), web identity (AWS_WEB_IDENTITY_TOKEN_FILE +
AWS_ROLE_ARN, through STS; AWS_ENDPOINT_URL_STS moves the endpoint), container credentials,
instance metadata. Temporary credentials are re-resolved at half their lifetime, at most 15
minutes before expiry (botocore's own advisory window); long-lived ones every 5 minutes, so a
rotated key in a shared file or a re-projected token file is picked up without a restart.

A failed resolution keeps the old credentials while they are valid, retries with backoff
(1 s doubling to 60 s) and is logged once per distinct problem by exception class and a
redacted message. The secret key and session token never reach a log, an error, a metric or
status; the secret is what `get()` returns as a string, so the engine's redaction of provider
keys removes it verbatim from upstream text too.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..adapters.bedrock import AwsKey
from ..adapters.errors import redact

log = logging.getLogger("detour.aws_auth")

__all__ = ["AwsCredentials"]

#: Temporary credentials: refresh at half their lifetime, but at least this long before expiry.
MAX_MARGIN = 900.0
#: Long-lived credentials (env, shared file): looked up again this often (rotation).
STATIC_RECHECK = 300.0
#: Credentials this close to expiry are not used any more (clock skew, time in flight).
EXPIRY_GUARD = 5.0
MAX_BACKOFF = 60.0
BACKGROUND_RETRIES = 6


def _timer(delay: float, fn: Callable[[], None]) -> None:
    timer = threading.Timer(max(0.0, delay), fn)
    timer.daemon = True
    timer.start()


def _resolve(profile: str | None, region: str | None = None) -> tuple[AwsKey, float | None]:
    """One run of botocore's credential chain: (credentials, expiry as epoch seconds or None).
    `region` (the provider's) is the session's default, so STS is called in that region when
    neither AWS_REGION nor the profile names one."""
    import botocore.session

    session = botocore.session.Session(profile=profile)
    if region and not session.get_config_variable("region"):
        session.set_config_variable("region", region)
    creds = session.get_credentials()
    if creds is None:
        raise LookupError("no AWS credentials found (env, shared files, web identity, container or "
                          "instance metadata)")
    frozen = creds.get_frozen_credentials()
    if not frozen.access_key or not frozen.secret_key:
        raise LookupError("the AWS credentials are incomplete")
    expiry: Any = getattr(creds, "_expiry_time", None)
    expires = expiry.timestamp() if isinstance(expiry, dt.datetime) else None
    return AwsKey.of(frozen.access_key, frozen.secret_key, frozen.token), expires


class AwsCredentials:
    """Lazily refreshed AWS credentials (the `Credential` interface: `get`, `file`, `describe`,
    `refresh`)."""

    def __init__(self, profile: str | None = None, *, region: str | None = None,
                 clock: Callable[[], float] = time.time, name: str = "",
                 schedule: Callable[[float, Callable[[], None]], None] | None = None,
                 on_result: Callable[[bool], None] | None = None,
                 resolve: Callable[[str | None], tuple[AwsKey, float | None]] | None = None) -> None:
        self._profile = profile
        self._region = region
        self._clock = clock
        self._name = name
        self._schedule = schedule or _timer
        self._resolve = resolve or (lambda prof: _resolve(prof, region))
        self.on_result = on_result
        self._lock = threading.Lock()
        self._key: AwsKey | None = None
        self._expiry = 0.0
        self._refresh_at = 0.0
        self._inflight = False
        self._failures = 0
        self._next_try = 0.0
        self._problem: str | None = None
        self._fetched = threading.Event()
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"AwsCredentials({self.describe})"

    __str__ = __repr__

    @property
    def describe(self) -> str:
        return f"aws credential chain (profile {self._profile})" if self._profile else "aws credential chain"

    @property
    def profile(self) -> str | None:
        return self._profile

    @property
    def region(self) -> str | None:
        return self._region

    @property
    def file(self) -> str | None:
        return None   # the chain re-reads its files on every refresh

    @property
    def problem(self) -> str | None:
        return self._problem

    def start(self) -> None:
        self._kick(self._clock(), force=True)

    def wait(self, timeout: float) -> bool:
        """Block until credentials were resolved once (tests, tools; never on the event loop)."""
        return self._fetched.wait(timeout)

    def get(self) -> AwsKey | None:
        now = self._clock()
        if now >= self._refresh_at:
            self._kick(now)
        key = self._key
        return key if key is not None and now < self._expiry else None

    def refresh(self, complete: bool = False) -> None:
        self._kick(self._clock(), force=True)

    def _report(self, ok: bool) -> None:
        if self.on_result is not None:
            try:
                self.on_result(ok)
            except Exception:  # noqa: BLE001
                log.exception("provider %s: reporting a credential fetch failed", self._name)

    def _kick(self, now: float, force: bool = False) -> None:
        with self._lock:
            if self._inflight or (not force and now < self._next_try):
                return
            self._inflight = True
        threading.Thread(target=self._run, name=f"aws-credentials-{self._name}", daemon=True).start()

    def _run(self) -> None:
        started = self._clock()
        try:
            key, expires = self._resolve(self._profile)
            with self._lock:
                self._key = key
                if expires is None:
                    self._expiry = float("inf")
                    self._refresh_at = started + STATIC_RECHECK
                else:
                    lifetime = max(0.0, expires - started)
                    self._expiry = expires - min(EXPIRY_GUARD, lifetime / 4)
                    self._refresh_at = expires - min(MAX_MARGIN, lifetime / 2)
                self._failures, self._next_try = 0, 0.0
            if self._problem is not None:
                log.info("provider %s: the %s works again", self._name, self.describe)
            self._problem = None
            self.refreshes += 1
            self._fetched.set()
            self._report(True)
        except Exception as exc:  # noqa: BLE001  (any failure: keep the old credentials, retry later)
            old = self._key
            secrets = (old, old.token, old.access_key) if old is not None else ()
            problem = f"{type(exc).__name__}: {redact(str(exc), secrets)[:300]}"
            with self._lock:
                self._failures += 1
                self._next_try = self._clock() + min(MAX_BACKOFF, 2.0 ** (self._failures - 1))
            if self._failures <= BACKGROUND_RETRIES:
                self._schedule(self._next_try - self._clock(), lambda: self._kick(self._clock(), force=True))
            if problem != self._problem:
                log.warning("provider %s: cannot get AWS credentials from the %s: %s",
                            self._name, self.describe, problem)
            self._problem = problem
            self._report(False)
        finally:
            with self._lock:
                self._inflight = False
