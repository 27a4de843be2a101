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
redacted message (the loop is `_refreshed.BackgroundRefreshed`, shared with `GoogleToken`). The secret key and session token never reach a log, an error, a metric or
status; the secret is what `get()` returns as a string, so the engine's redaction of provider
keys removes it verbatim from upstream text too.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from ..adapters.bedrock import AwsKey
from ._refreshed import BackgroundRefreshed

log = logging.getLogger("detour.aws_auth")

__all__ = ["AwsCredentials"]

#: Temporary credentials: refresh at half their lifetime, but at least this long before expiry.
MAX_MARGIN = 900.0
#: Long-lived credentials (env, shared file): looked up again this often (rotation).
STATIC_RECHECK = 300.0


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


class AwsCredentials(BackgroundRefreshed[AwsKey]):
    """Lazily refreshed AWS credentials (the `Credential` interface: `get`, `file`, `describe`,
    `refresh`)."""

    max_margin = MAX_MARGIN
    static_recheck = STATIC_RECHECK
    thread_prefix = "aws-credentials"
    what = "AWS credentials"

    def __init__(self, profile: str | None = None, *, region: str | None = None,
                 clock: Callable[[], float] = time.time, name: str = "",
                 schedule: Callable[[float, Callable[[], None]], None] | None = None,
                 on_result: Callable[[bool], None] | None = None,
                 resolve: Callable[[str | None], tuple[AwsKey, float | None]] | None = None) -> None:
        super().__init__(clock=clock, name=name, schedule=schedule, on_result=on_result, log=log)
        self._profile = profile
        self._region = region
        self._resolve = resolve or (lambda prof: _resolve(prof, region))

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

    def _fetch(self, started: float) -> tuple[AwsKey, float | None]:
        return self._resolve(self._profile)

    def _secrets(self) -> tuple[str | None, ...]:
        old = self._value
        return (old, old.token, old.access_key) if old is not None else ()
