"""Active probes (provider `activeProbes`): the background task that sends them.

Every `tick` it asks the policy (`policy.probes.probe_due`) which targets of probing-enabled
providers are due: breaker half-open with a free probe slot, no attempt for `interval`, no peer
claiming the probe. For each it runs one probe task:

1. with shared health working, claim the probe through the Pod annotation and go on only if the
   claim wins (`claim_probe`: one replica at a time); otherwise (plain `detour-proxy --config`, or
   the API unreachable) this replica probes on its own;
2. check again that the target is still due (traffic may have come meanwhile: it probes by
   itself), take the half-open probe slot (`TargetState.acquire`), send the probe
   (`engine.probe.send_probe`) and record its outcome with that ticket, exactly like a client
   request's probe: a success closes the breaker, a failure re-opens it with the doubled cooldown.

Probes never touch the retry budget, the route metrics or a client; they are counted in
`detour_probe_attempts_total{provider, outcome}`. Nothing here is ever awaited by a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..config import ActiveProbes
from ..engine.probe import send_probe
from ..policy import probe_due
from ..state import AppState

log = logging.getLogger("detour.probes")

#: Longest pause between two looks at the targets (a cooldown's end is noticed within it).
MAX_TICK = 1.0
MIN_TICK = 0.05
#: After its probe claim is written, a replica waits this long (plus minInterval, the most a
#: peer's write may be held back) for a peer's simultaneous claim before it probes.
CLAIM_SETTLE = 1.0
#: How long a replica waits for its probe claim to be written before probing anyway.
CLAIM_WRITE_WAIT = 5.0


class ActiveProber:
    """Sends the active probes of the current config; idles while no provider enables them."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._task: asyncio.Task[None] | None = None
        self._running: dict[Any, asyncio.Task[None]] = {}
        self._said: set[str] = set()   # targets whose refused probe was logged

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="detour-active-probes")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                tick = self.scan()
            except Exception:  # a bug: say so, keep the proxy serving, look again later
                log.exception("active probes: scan failed")
                tick = MAX_TICK
            await asyncio.sleep(tick)

    def _shared(self) -> Any:
        svc = self.state.services.get("shared_health")
        return svc if svc is not None and svc.coordinating() else None

    def scan(self) -> float:
        """Start a probe task for every due target; the pause until the next look."""
        gw = self.state.gateway
        if gw is None:
            return MAX_TICK
        now = self.state.clock.now()
        shared = self._shared()
        tick = MAX_TICK
        seen = set()
        for route in gw.routes:
            for tr in route.targets:
                settings = tr.provider.config.active_probes
                if not settings.enabled or tr.key in seen:
                    continue
                seen.add(tr.key)
                tick = min(tick, max(MIN_TICK, settings.interval / 4))
                if tr.key in self._running:
                    continue
                claimed = shared is not None and shared.probe_claims.claimed_by_other(tr.key, shared.pod, now)
                if probe_due(tr.state, now, settings.interval, claimed_by_peer=claimed):
                    self._running[tr.key] = asyncio.create_task(self._probe(tr, settings, shared),
                                                                name=f"detour-probe-{tr.label}")
        return tick

    async def _probe(self, tr: Any, settings: ActiveProbes, shared: Any) -> None:
        try:
            if shared is not None and not await claim_probe(shared, tr.key, settings.interval):
                return
            clock = self.state.clock
            st = tr.state
            now = clock.now()
            if not probe_due(st, now, settings.interval):
                return   # traffic came meanwhile (it probes by itself), or the breaker moved
            ticket = st.acquire(now)
            if ticket is None:
                return
            try:
                outcome = await send_probe(self.state.upstream, tr, settings, clock)
            except BaseException:
                st.release(clock.now(), ticket)
                raise
            if outcome is None:   # cannot be probed now (no credentials yet): no attempt
                st.release(clock.now(), ticket)
                return
            st.record(outcome, clock.now(), ticket)
            result = "success" if outcome.ok else "failure"
            self.state.metrics.probes.labels(tr.key.provider, result).inc()
            log.info("active probe of %s: %s%s, breaker %s", tr.label, result,
                     "" if outcome.ok else f" ({outcome.error_class})", st.breaker_state(clock.now()).value)
            if not outcome.ok and not outcome.counts_against_target and tr.label not in self._said:
                self._said.add(tr.label)   # the probe itself was refused: it proves nothing either way
                log.warning("active probe of %s refused as a bad request (%s); check the provider's "
                            "activeProbes (prompt, maxTokens)", tr.label, outcome.error_class)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("active probe of %s failed unexpectedly", tr.label)
        finally:
            self._running.pop(tr.key, None)


async def claim_probe(shared: Any, key: Any, hold: float) -> bool:
    """Claim the probe of `key` for `hold` seconds through shared health and say whether this
    replica may send it. The claim goes out with the next write (a random part of minInterval
    later, like a breaker change); then the replica waits for simultaneous claims of peers
    (minInterval + CLAIM_SETTLE), and the earliest claim wins on every replica. A lost claim is
    withdrawn (it would also end by itself)."""
    s = shared.settings()
    clock = shared.state.clock
    if s is None or shared.probe_claims.claimed_by_other(key, shared.pod, clock.now()):
        return False
    since = shared.wall()
    shared.probe_claims.claim(key, shared.pod, since, clock.now() + hold)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + s.min_interval + CLAIM_WRITE_WAIT
    shared.wake()
    while (key, since) not in shared.written_claims and loop.time() < deadline:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(shared.written.wait(), deadline - loop.time())
    await asyncio.sleep(s.min_interval + CLAIM_SETTLE)
    won: bool = shared.probe_claims.winner(key, clock.now()) == shared.pod
    if not won:
        shared.probe_claims.withdraw(key, shared.pod)
    return won


async def start(state: AppState) -> ActiveProber:
    svc = ActiveProber(state)
    await svc.start()
    return svc
