"""KubeAPI.from_environment sends the ServiceAccount/kubeconfig token (issue 12).

kubernetes>=36 config loaders store the token under `BearerToken`; the proxy used to ask for the
`authorization` api_key entry, got None, and every Pod call was `system:anonymous` on a real API
server. tests/cluster proves it end to end; this pins both loaders without a cluster.
"""

from __future__ import annotations

import json

import certifi
from kubernetes.config import incluster_config, kube_config

from detour_proxy.cluster.kube_api import KubeAPI


def test_kubeconfig_token_is_sent(tmp_path, monkeypatch):
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:1"}}],
           "users": [{"name": "u", "user": {"token": "tok-from-kubeconfig"}}],
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}
    (tmp_path / "kubeconfig").write_text(json.dumps(cfg))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    api = KubeAPI.from_environment()
    assert api._token() == "Bearer tok-from-kubeconfig"


def test_in_cluster_token_is_sent(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("tok-1")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", certifi.where())  # any CA bundle
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "1")
    api = KubeAPI.from_environment()
    assert api._token().lower() == "bearer tok-1"  # the scheme is case-insensitive (RFC 7235)
