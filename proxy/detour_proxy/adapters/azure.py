"""Azure OpenAI: the OpenAI dialect with deployment-scoped URLs and an `api-key` header.

The model of a target is the Azure *deployment* name; it goes into the URL path, and the
api-version into the query string. URLs are cached per deployment because a config has only
a handful of them and this runs on every attempt.
"""

from __future__ import annotations

from urllib.parse import quote

from ..config import Provider
from .openai import OpenAIAdapter

__all__ = ["AzureOpenAIAdapter", "DEFAULT_AZURE_API_VERSION"]

DEFAULT_AZURE_API_VERSION = "2024-10-21"


class AzureOpenAIAdapter(OpenAIAdapter):
    auth_header = "api-key"
    auth_prefix = ""

    def __init__(self, provider: Provider) -> None:
        super().__init__(provider)
        base = provider.base_url.rstrip("/")
        if base.endswith("/openai"):  # tolerate a baseURL that already names the API root
            base = base[: -len("/openai")]
        self._prefix = base + "/openai/deployments/"
        self._query = "?api-version=" + quote(provider.api_version or DEFAULT_AZURE_API_VERSION, safe="")
        self._urls: dict[tuple[str, str], str] = {}

    def _url(self, model: str, op: str) -> str:
        key = (model, op)
        url = self._urls.get(key)
        if url is None:
            url = f"{self._prefix}{quote(model, safe='')}/{op}{self._query}"
            if len(self._urls) < 1024:
                self._urls[key] = url
        return url

    def chat_url(self, model: str) -> str:
        return self._url(model, "chat/completions")

    def embeddings_url(self, model: str) -> str:
        return self._url(model, "embeddings")
