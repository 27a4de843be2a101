"""Shared health fans out O(N), not O(N^2), on the real API server (issue 14.3): 30 simulated
replicas (the real SharedHealthService each, with its own pod-bound token, see fanout.py).

At rest nothing is written and no watch event is delivered; during an outage that every replica
sees at once, the first replica to announce the open suppresses the others' announcements (they
import it instead), so the incident costs a few writes x N watchers, within the staleness bound. bench/shared_health_fanout.py
runs the same at 50 and 200 replicas (figures in bench/results/ and README)."""

from __future__ import annotations

from cluster.fanout import measure
from cluster.realkube import Cluster

N = 30


def test_rest_costs_nothing_and_an_outage_costs_o_n(cluster: Cluster, namespace: str) -> None:
    figures = measure(cluster, namespace, N, window=3.0)
    print(f"\n[shared-health fan-out, {N} replicas] {figures}")
    rest, outage = figures["at_rest"], figures["outage"]
    assert rest["patches"] == 0 and rest["watch_events"] == 0, rest
    assert rest["lists"] == 0, rest
    # Every replica sees the outage at once and many open the breaker on their own evidence, but
    # the first announcement suppresses the rest: a few writes, each an event for N-1 watchers.
    # (Unlabelled writes of request figures, at most one per replica per heartbeat, reach only the
    # operator's watch: they are not peer watch events.)
    assert outage["opened_locally"] >= 1 and 1 <= outage["patches"] <= N + 5, outage
    assert 0 < outage["watch_events"] <= 5 * (N - 1), f"more than a few announcements: {outage}"
    assert outage["watch_events"] < N * N / 4, f"O(N^2) fan-out: {outage}"
    assert outage["staleness_s"] < 2.0, outage


def test_a_report_over_the_annotation_limit_is_cut_not_refused_forever(cluster: Cluster, namespace: str) -> None:
    """3,000 targets make a ~400 KiB report: over the 256 KiB the API server allows for all of a
    Pod's annotations, so every PATCH would fail with 422. The report leaves closed targets out,
    says how many, and the write succeeds; open targets are kept."""
    import asyncio
    import ssl

    import orjson

    from cluster.fanout import BASE, create_pods
    from cluster.realkube import wait_for
    from cluster.scale_support import PROXY_SA, install_chart_rbac
    from detour_proxy.cluster.kube_api import KubeAPI
    from detour_proxy.cluster.shared_health import SharedHealthService
    from detour_proxy.config import parse_config
    from detour_proxy.policy import Outcome, OutcomeKind, TargetKey
    from detour_proxy.state import AppState

    ns = namespace
    admission = install_chart_rbac(cluster, ns)
    try:
        (pod,) = create_pods(cluster, ns, 1)
        token = cluster.token(PROXY_SA, ns, pod=pod)
        models = [f"model-with-a-rather-long-name-{i:04d}" for i in range(3000)]
        state = AppState()
        state.install(parse_config({
            "providers": [{"name": "a", "baseURL": BASE}],
            "routes": [{"name": f"r{j:03d}", "match": {"models": [f"g{j}-*"]},
                        "targets": [{"provider": "a", "model": m} for m in models[j * 30:(j + 1) * 30]]}
                       for j in range(100)],
            "health": {"breaker": {"consecutiveFailures": 1, "cooldown": "60s"}},
            "sharedHealth": {"enabled": True, "minInterval": "0.1s"}}))
        for m in models:  # every target gets a figure, so none is "empty"
            state.registry.state(TargetKey("a", m, BASE)).record(Outcome(OutcomeKind.SUCCESS), state.clock.now())
        ctx = ssl.create_default_context(cafile=str(cluster.dir / "pki" / "ca.crt"))

        async def run() -> None:
            svc = SharedHealthService(state, pod=pod, namespace=ns, api_factory=lambda: KubeAPI(
                cluster.server, token=lambda: f"Bearer {token}", ssl_context=ctx))
            await svc.start()
            try:
                st = state.registry.state(TargetKey("a", models[1234], BASE))
                st.record(Outcome(OutcomeKind.HTTP_ERROR, status=503), state.clock.now())  # one open target
                while svc.publishes < 2:
                    await asyncio.sleep(0.05)
            finally:
                await svc.stop()
        asyncio.run(asyncio.wait_for(run(), 60))
        raw = wait_for(lambda: cluster.get_json("pod", pod, ns=ns)["metadata"]["annotations"].get("detour.dev/health"),
                       10, "the published report")
        doc = orjson.loads(raw)
        assert len(raw.encode()) <= 200 * 1024 and doc["omitted"] == 2999, (len(raw), doc.get("omitted"))
        assert [t["model"] for t in doc["targets"]] == [models[1234]] and doc["targets"][0]["state"] == "open"
        assert state.metrics.registry.get_sample_value("detour_shared_health_publish_total", {"result": "error"}) is None
    finally:
        cluster.kubectl("delete", *admission, "--ignore-not-found", check=False)
