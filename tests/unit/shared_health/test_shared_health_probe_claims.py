"""Probe claims in the health annotation (health_probes): encoded with the report, read by peers
within the skew bound, and news worth a write (with the open label, so peers watch the claimant)."""

from __future__ import annotations

import orjson

from detour_proxy.cluster.health_codec import decode, encode, endpoint_id, format_time
from detour_proxy.cluster.health_probes import decode_claims, encode_claims, merge_claims
from detour_proxy.cluster.health_publish import reports_open, significant
from detour_proxy.policy import ProbeClaims, TargetKey

WALL = 1_800_000_000.0      # wall clock of the writer
MONO = 500.0                # its engine clock at the same moment
KEY = TargetKey("primary", "gpt-4o-mini", "https://primary.example/v1")
OTHER = TargetKey("backup", "m", "https://backup.example/v1")


def report(claims, *, wall: float = WALL, mono: float = MONO) -> str:
    return encode("pod-2", [], wall_now=wall, mono_now=mono, heartbeat=300.0,
                  probes=encode_claims(claims, wall_now=wall, mono_now=mono))


def test_a_report_carries_its_live_claims_in_wall_time():
    text = report([(KEY, WALL - 1, MONO + 60), (OTHER, WALL - 90, MONO - 30)])   # the second one ended
    (entry,) = orjson.loads(text)["probes"]
    assert entry == {"provider": "primary", "model": "gpt-4o-mini", "endpoint": endpoint_id(KEY.base_url),
                     "since": format_time(WALL - 1), "until": format_time(WALL + 60)}
    (claim,) = decode_claims(decode(text).probes)
    assert (claim.since, claim.until) == (WALL - 1, WALL + 60)
    assert "probes" not in orjson.loads(report([]))      # nothing to claim: the report is unchanged


def test_malformed_claims_are_skipped_not_fatal():
    raw = [{"provider": "p"}, "x", {"provider": "p", "model": "m", "endpoint": "e", "since": "soon",
                                    "until": "2026-01-01T00:00:00Z"},
           {"provider": "p", "model": "m", "endpoint": "e", "since": "2026-01-01T00:00:00Z",
            "until": "2026-01-01T00:01:00Z", "key": -1},
           {"provider": "p", "model": "m", "endpoint": "e", "since": "2026-01-01T00:00:00Z",
            "until": "2026-01-01T00:01:00Z", "key": 2}]
    (ok,) = decode_claims(raw)
    assert ok.identity == ("p", "m", "e", 2)
    assert decode_claims({"not": "a list"}) == ()


def test_a_peer_claim_is_held_for_what_is_left_and_never_longer_than_announced():
    table = ProbeClaims()
    peer = decode(report([(KEY, WALL, MONO + 60)]))
    here = 7000.0                                             # this replica's engine clock
    merge_claims(table, "pod-2", peer, [KEY, OTHER], wall_now=WALL + 10, mono_now=here)
    assert table.claimed_by_other(KEY, "pod-1", here + 49.9)
    assert not table.claimed_by_other(KEY, "pod-1", here + 50.0)   # 60 s claimed, 10 s already gone
    assert not table.claimed_by_other(OTHER, "pod-1", here)
    # a peer whose clock runs 1 h ahead cannot stretch its 60 s claim
    ahead = decode(report([(KEY, WALL + 3600, MONO + 60)], wall=WALL + 3600))
    merge_claims(table, "pod-2", ahead, [KEY], wall_now=WALL, mono_now=here)
    assert table.claimed_by_other(KEY, "pod-1", here + 59.9) and not table.claimed_by_other(KEY, "pod-1", here + 60)
    # a stale report (3 keepalives old) claims nothing; an unknown target is ignored
    merge_claims(table, "pod-2", peer, [KEY], wall_now=WALL + 901, mono_now=here)
    assert not table.claimed_by_other(KEY, "pod-1", here)
    merge_claims(table, "pod-2", peer, [OTHER], wall_now=WALL, mono_now=here)
    assert table.live(KEY, here) == []


def test_a_new_claim_is_news_at_once_and_labels_the_pod_an_ended_one_is_not():
    quiet = decode(report([]))
    claiming = decode(report([(KEY, WALL, MONO + 60)]))
    assert significant(quiet, claiming, figures=False)        # written before the probe goes
    assert reports_open(claiming) and not reports_open(quiet)  # peers watch only labelled pods
    assert not significant(claiming, decode(report([], wall=WALL + 61, mono=MONO + 61)))
    again = decode(report([(KEY, WALL + 120, MONO + 180)], wall=WALL + 120, mono=MONO + 120))
    assert significant(claiming, again)                       # the next interval's claim is news
