"""The Google flavour's auth infrastructure: the OAuth token endpoint (service-account JWT
grant, its assertion checked against the sim's own key), the Security Token Service of workload
identity federation, a GCE metadata server, and the admin routes that hand out a key file and
set token lifetime / outages. Kept apart from the model API (`google_api`): these routes are
not faulted by ``/_sim/faults`` and the tokens they issue are what the Vertex paths check."""

from __future__ import annotations

import base64
import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from .server import Sim

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
#: The subject token the STS endpoint accepts (a stand-in for a Kubernetes service-account token).
SUBJECT_TOKEN = "sim-kubernetes-service-account-token"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
SA_EMAIL = "detour-sim@sim-project.iam.gserviceaccount.com"


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


class GoogleOAuth:
    """Issues and checks the access tokens of one Google sim."""

    def __init__(self, sim: "Sim") -> None:
        self.sim = sim
        self.token_lifetime = 3600.0
        self.token_fail: int | None = None
        self.tokens: dict[str, float] = {}   # issued token -> expiry (wall clock)
        self._key: Any = None
        self.key_id = secrets.token_hex(8)

    def reset(self) -> None:
        """`POST /_sim/reset`: default token lifetime, no outage (issued tokens stay valid)."""
        self.token_lifetime = 3600.0
        self.token_fail = None

    def valid(self, token: str) -> bool:
        expiry = self.tokens.get(token)
        return expiry is not None and expiry > time.time()

    def routes(self):
        return [
            ("POST", "/token", self.token),
            ("POST", "/sts/v1/token", self.sts_token),
            ("GET", "/computeMetadata/v1/instance/service-accounts/default/token", self.metadata_token),
            ("GET", "/computeMetadata/v1/instance/service-accounts/default/", self.metadata_account),
            ("GET", "/computeMetadata/v1/project/project-id", self.metadata_project),
            ("GET", "/", self.metadata_project),
            ("GET", "/_sim/google/service-account", self.service_account),
            ("PUT", "/_sim/google/token", self.token_settings),
        ]

    def _private_key(self) -> Any:
        if self._key is None:
            from cryptography.hazmat.primitives.asymmetric import rsa

            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._key

    def _issue(self) -> web.Response:
        token = "ya29.sim-" + secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.token_lifetime
        self.sim.stats.bump("tokensIssued")
        body = {"access_token": token, "expires_in": int(self.token_lifetime) or 1, "token_type": "Bearer"}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _refuse(self, status: int, error: str, why: str) -> web.Response:
        self.sim.stats.bump("tokensRefused")
        return web.Response(status=status, body=orjson.dumps({"error": error, "error_description": why}),
                            content_type="application/json")

    def _refuse_configured(self, why: str) -> web.Response:
        """`failStatus`: 5xx is an outage (`internal_failure`, which google-auth retries for a few
        seconds), 4xx a refusal (`invalid_grant`, not retried)."""
        status = self.token_fail or 500
        return self._refuse(status, "internal_failure" if status >= 500 else "invalid_grant", why)

    async def token(self, request: web.Request) -> web.Response:
        if self.token_fail:
            return self._refuse_configured("simulated token endpoint failure")
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return self._refuse(400, "unsupported_grant_type", "Invalid grant_type")
        assertion = str(form.get("assertion") or "").encode()
        why = self._check_assertion(assertion, str(request.url.with_query(None)))
        if why:
            return self._refuse(400, "invalid_grant", why)
        return self._issue()

    def _check_assertion(self, assertion: bytes, audience: str) -> str | None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            head, payload, sig = assertion.split(b".")
            header, claims = orjson.loads(_b64url(head)), orjson.loads(_b64url(payload))
            signature = _b64url(sig)
        except (ValueError, orjson.JSONDecodeError):
            return "Invalid JWT: not a signed JWT"
        if header.get("alg") != "RS256":
            return "Invalid JWT: alg must be RS256"
        try:
            self._private_key().public_key().verify(signature, head + b"." + payload, padding.PKCS1v15(),
                                                    hashes.SHA256())
        except InvalidSignature:
            return "Invalid JWT Signature."
        now = time.time()
        if claims.get("iss") != SA_EMAIL:
            return "Invalid JWT: iss is not the service account"
        if claims.get("aud") not in (audience, GOOGLE_TOKEN_URI):   # google-auth addresses Google's endpoint
            return f"Invalid JWT: aud must be {GOOGLE_TOKEN_URI}"
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < now:
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe"
        if not claims.get("scope"):
            return "Invalid JWT: no scope"
        return None

    async def sts_token(self, request: web.Request) -> web.Response:
        """Google's Security Token Service for workload identity federation (`external_account`
        credentials): a token-exchange grant with the workload's own token as subject."""
        if self.token_fail:
            return self._refuse_configured("simulated STS failure")
        form = await request.post()
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return self._refuse(400, "unsupported_grant_type", "Invalid grant_type")
        if not str(form.get("audience") or "").startswith("//iam.googleapis.com/"):
            return self._refuse(400, "invalid_request", "Invalid audience")
        if form.get("subject_token") != SUBJECT_TOKEN:
            return self._refuse(400, "invalid_grant", "The subject token is not valid")
        resp = self._issue()
        doc = orjson.loads(resp.body)  # type: ignore[arg-type]
        doc["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token"
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def service_account(self, request: web.Request) -> web.Response:
        from cryptography.hazmat.primitives import serialization

        pem = self._private_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()).decode()
        base = f"{request.scheme}://{request.host}"
        doc = {"type": "service_account", "project_id": "sim-project", "private_key_id": self.key_id,
               "private_key": pem, "client_email": SA_EMAIL, "client_id": "1000000000000000000",
               "auth_uri": base + "/auth", "token_uri": base + "/token"}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def token_settings(self, request: web.Request) -> web.Response:
        try:
            doc = orjson.loads(await request.read())
            if "lifetime" in doc:
                lifetime = float(doc["lifetime"])
                if not 0 < lifetime <= 86400:
                    raise ValueError
                self.token_lifetime = lifetime
            if "failStatus" in doc:
                fail = doc["failStatus"]
                if fail is not None and (not isinstance(fail, int) or not 400 <= fail <= 599):
                    raise ValueError
                self.token_fail = fail
        except (ValueError, TypeError, AttributeError, orjson.JSONDecodeError):
            return web.Response(status=400, text="expected {\"lifetime\": seconds, \"failStatus\": int|null}")
        return web.Response(body=orjson.dumps({"lifetime": self.token_lifetime, "failStatus": self.token_fail}),
                            content_type="application/json")

    # -- GCE metadata server --------------------------------------------------------
    @staticmethod
    def _flavor_ok(request: web.Request) -> bool:
        return request.headers.get("Metadata-Flavor") == "Google"

    async def metadata_token(self, request: web.Request) -> web.Response:
        if not self._flavor_ok(request):
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
        if self.token_fail:
            return self._refuse_configured("simulated metadata server failure")
        resp = self._issue()
        resp.headers["Metadata-Flavor"] = "Google"
        return resp

    async def metadata_account(self, request: web.Request) -> web.Response:
        if not self._flavor_ok(request):
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
        doc = {"email": SA_EMAIL, "aliases": ["default"], "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
        return web.Response(body=orjson.dumps(doc), content_type="application/json",
                            headers={"Metadata-Flavor": "Google"})

    async def metadata_project(self, request: web.Request) -> web.Response:
        return web.Response(text="sim-project", headers={"Metadata-Flavor": "Google"})
