"""Where a bedrock provider's AWS credentials come from (issue 16): botocore's standard chain
-- env, the shared credentials file with a profile, web identity (IRSA) through the
simulator's STS -- resolved in a thread, and requests signed with them (the simulator checks
every signature, so a request that succeeds proves the chain and the signing)."""

from __future__ import annotations

import openai
import pytest

from detour_proxy.adapters.bedrock import AwsKey
from detour_proxy.transport.aws_auth import AwsCredentials
from detour_sim.bedrock_api import ACCESS_KEY, SECRET_KEY
from support import ProxyServer, wait_until

from test_bedrock_provider import CANONICAL, config

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_ENDPOINT_URL_STS",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


@pytest.fixture()
def clean_aws(monkeypatch, tmp_path):
    for k in AWS_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return monkeypatch


def resolved(profile=None) -> AwsKey:
    creds = AwsCredentials(profile, name="t")
    creds.start()
    assert creds.wait(10), creds.problem
    key = creds.get()
    assert key is not None
    return key


def chat(proxy):
    return openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0).chat.completions.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content


def test_env_credentials(clean_aws):
    clean_aws.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    clean_aws.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    clean_aws.setenv("AWS_SESSION_TOKEN", "env-token")
    key = resolved()
    assert (key.access_key, str.__str__(key), key.token) == ("AKIDENV", "env-secret", "env-token")
    assert "env-secret" not in repr(key) and "env-secret" not in f"{key}"


def test_shared_file_with_a_profile(clean_aws, tmp_path, bedrock_sim):
    (tmp_path / "credentials").write_text(
        f"[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = nope\n\n"
        f"[detour]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    assert resolved("detour").access_key == ACCESS_KEY          # the provider's `profile`
    clean_aws.setenv("AWS_PROFILE", "detour")
    assert resolved().access_key == ACCESS_KEY                  # AWS_PROFILE
    with ProxyServer(config(bedrock_sim)) as proxy:
        proxy.state.gateway.providers["bedrock"].credential.wait(10)
        assert chat(proxy) == CANONICAL


def test_web_identity_through_sts_signs_with_session_credentials(clean_aws, tmp_path, bedrock_sim):
    """IRSA: a projected service-account token and a role ARN; botocore calls
    AssumeRoleWithWebIdentity (AWS_ENDPOINT_URL_STS points it at the simulator)."""
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.projected-service-account-token.sig")
    clean_aws.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    clean_aws.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/detour-bedrock")
    clean_aws.setenv("AWS_ENDPOINT_URL_STS", bedrock_sim.url + "/sts")
    clean_aws.delenv("AWS_REGION")      # the provider's region is the session's
    with ProxyServer(config(bedrock_sim)) as proxy:
        cred = proxy.state.gateway.providers["bedrock"].credential
        assert cred.wait(10), cred.problem
        key = cred.get()
        assert key.access_key.startswith("ASIASIMSTS") and key.token.startswith("sts-session-token-")
        assert chat(proxy) == CANONICAL
    assert bedrock_sim.admin.get("/_sim/bedrock").json()["stsCalls"] == 1


def test_no_credentials_makes_the_target_unavailable_not_a_hang(clean_aws, bedrock_sim):
    with ProxyServer(config(bedrock_sim)) as proxy:
        cred = proxy.state.gateway.providers["bedrock"].credential
        with pytest.raises(openai.APIStatusError) as exc:
            chat(proxy)
        assert exc.value.status_code == 503
        assert cred.wait(0) is False
        wait_until(lambda: "no AWS credentials" in (cred.problem or ""), 10, "the failed resolution reported")
    assert bedrock_sim.stats()["requests"] == {}
