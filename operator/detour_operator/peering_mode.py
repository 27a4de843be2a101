"""Whether `detour-operator` joins a kopf peering or acts alone, decided once at start.

Why: kopf run with `--peering NAME` pauses every replica until the KopfPeering object NAME exists
and says so only at debug level, while its liveness endpoint keeps answering 200. An operator
started with no flags against a cluster without that object therefore did nothing, silently. So:
- no flag: look for the object; join the peering if it exists, otherwise act standalone, and say
  which in one log line;
- `--peering NAME` given: a missing object is reported once, loudly (the replica will wait);
- `--standalone`: no lookup.
The lookup is a `list` with a name field selector, the verb the chart's peering Role grants.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger("detour_operator.peering")
GROUP, VERSION = "kopf.dev", "v1"

# (name, namespaces or () for cluster-wide) -> True/False, or None when the lookup failed.
Lookup = Callable[[str, Sequence[str]], "bool | None"]


def peering_object_exists(name: str, namespaces: Sequence[str]) -> bool | None:
    """Whether KopfPeering `name` exists in every namespace (ClusterKopfPeering when none are given)."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        try:
            config.load_incluster_config()
        except ConfigException:
            config.load_kube_config()
        api = client.CustomObjectsApi()
        selector = f"metadata.name={name}"
        if not namespaces:
            found = api.list_cluster_custom_object(GROUP, VERSION, "clusterkopfpeerings", field_selector=selector)
            return bool(found["items"])
        for ns in namespaces:
            found = api.list_namespaced_custom_object(GROUP, VERSION, ns, "kopfpeerings", field_selector=selector)
            if not found["items"]:
                return False
        return True
    except ApiException as exc:
        if exc.status == 404:  # the peering CRD itself is not installed
            return False
        log.warning("could not look up the kopf peering object %r: HTTP %s %s", name, exc.status, exc.reason)
        return None
    except (ConfigException, OSError) as exc:
        log.warning("could not look up the kopf peering object %r: %s", name, exc)
        return None


def where(name: str, namespaces: Sequence[str]) -> str:
    if not namespaces:
        return f"ClusterKopfPeering {name!r}"
    return f"KopfPeering {name!r} in namespace(s) {', '.join(namespaces)}"


def choose(peering: str | None, standalone: bool, namespaces: Sequence[str],
           lookup: Lookup = peering_object_exists) -> str | None:
    """The peering name to run with, or None for standalone; logs the reason once."""
    if standalone:
        return None
    if peering is not None:
        if lookup(peering, namespaces) is False:
            log.warning("%s does not exist: kopf keeps this operator PAUSED, handling nothing, until it is "
                        "created (the chart creates it when operator.replicas > 1); run with --standalone "
                        "for a single replica", where(peering, namespaces))
        return peering
    found = lookup(DEFAULT_NAME, namespaces)
    if found:
        log.warning("%s exists: joining the peering (one replica acts; --standalone to override)",
                    where(DEFAULT_NAME, namespaces))
        return DEFAULT_NAME
    log.warning("%s %s: acting standalone (pass --peering %s to coordinate replicas)",
                where(DEFAULT_NAME, namespaces), "was not found" if found is False else "could not be checked",
                DEFAULT_NAME)
    return None


DEFAULT_NAME = "detour"
