"""Operator settings: the namespace-wide parts of the routing config plus operator knobs.

Why a file and not a third CRD: health, retry budget, client auth, server and shared-health
settings are set once per installation by whoever installs the chart, so they live in the Helm
values and reach the operator as a mounted YAML file named by `DETOUR_SETTINGS_FILE` (absent =
all defaults). The same pydantic models as the proxy's config validate them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from detour_proxy import config as cfg

SETTINGS_ENV = "DETOUR_SETTINGS_FILE"


class OperatorSettings(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    health: cfg.Health = Field(default_factory=cfg.Health)
    retry_budget: cfg.RetryBudget = Field(default_factory=cfg.RetryBudget)
    client_auth: cfg.ClientAuth | None = None
    server: cfg.Server = Field(default_factory=cfg.Server)
    shared_health: cfg.SharedHealth = Field(default_factory=cfg.SharedHealth)
    credentials_mount_path: str = Field("/etc/detour/credentials", pattern=r"^/")
    proxy_pod_selector: str = Field("app.kubernetes.io/component=proxy", description="Equality label selector of proxy pods.")
    health_interval: cfg.Duration = Field(10.0, description="Roll health reports up at most this often per namespace (on report changes).")
    degraded_failure_ratio: float = Field(0.5, gt=0.0, le=1.0, description="Window failure ratio at which a provider counts as Degraded.")

    @model_validator(mode="after")
    def _no_inline_client_keys(self) -> OperatorSettings:
        # The settings end up in a ConfigMap: an inline key would be readable by anyone who can read it.
        if self.client_auth and any(k.value is not None for k in self.client_auth.keys):
            raise ValueError("clientAuth.keys: use env or file sources; inline values would land in the ConfigMap")
        return self

    def global_config(self) -> dict[str, Any]:
        """The namespace-wide sections of the routing config, in config (camelCase) form."""
        out: dict[str, Any] = {
            "health": self.health.model_dump(mode="json", by_alias=True, exclude_defaults=True),
            "retryBudget": self.retry_budget.model_dump(mode="json", by_alias=True, exclude_defaults=True),
            "server": self.server.model_dump(mode="json", by_alias=True, exclude_defaults=True),
            "sharedHealth": self.shared_health.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        }
        if self.client_auth is not None:
            out["clientAuth"] = self.client_auth.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {k: v for k, v in out.items() if v}

    def pod_labels(self) -> dict[str, str]:
        """The proxy pod selector as a label dict (equality terms only, as kopf filters need)."""
        labels: dict[str, str] = {}
        for term in filter(None, (t.strip() for t in self.proxy_pod_selector.split(","))):
            if "=" not in term or "!=" in term:
                raise ValueError(f"proxyPodSelector supports only key=value terms, got {term!r}")
            k, v = term.replace("==", "=").split("=", 1)
            labels[k.strip()] = v.strip()
        return labels


def load_settings(path: str | os.PathLike[str] | None = None) -> OperatorSettings:
    """Settings from `path`, else from $DETOUR_SETTINGS_FILE, else defaults. Raises ValueError."""
    path = path or os.environ.get(SETTINGS_ENV)
    if not path:
        return OperatorSettings()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return OperatorSettings.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"invalid operator settings {path}: {exc}") from None
