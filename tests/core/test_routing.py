"""The routing rule: consistent hashing against the transition weight, deadlines, classes."""

from __future__ import annotations

import math

import pytest

from servewise.core.routing import Pool, RouteParams, key_point, route, route_params

KEYS = [f"request-{i}".encode() for i in range(100_000)]


def shifting(weight: float, **values: object) -> RouteParams:
    """Real-time -> batching at ``weight``, batch p99 40 ms."""
    return route_params(
        current=Pool.REALTIME,
        target=Pool.BATCH,
        weight=weight,
        batch_p99_ms=40.0,
        **values,  # type: ignore[arg-type]
    )


def test_key_point_is_stable_and_in_unit_interval() -> None:
    """A key's point is the same on every call (and every process: BLAKE2b, not hash())."""
    assert key_point(b"abc") == key_point(b"abc")
    assert key_point(b"abc") == 0.8466046359861451  # pinned: load balancers may cache it
    assert all(0.0 <= key_point(k) < 1.0 for k in KEYS[:1000])


def test_same_key_same_pool_while_weight_unchanged() -> None:
    """Routing a key again with the same weight gives the same pool."""
    params = shifting(0.37)
    first = [route(params, k) for k in KEYS[:5000]]
    assert first == [route(params, k) for k in KEYS[:5000]]
    assert first == [route(shifting(0.37), k) for k in KEYS[:5000]]


@pytest.mark.parametrize("weight", [0.01, 0.1, 0.25, 0.5, 0.75, 0.9])
def test_split_matches_weight_within_one_percent(weight: float) -> None:
    """Over 100,000 keys the share sent to the target pool is the weight within 1%."""
    params = shifting(weight)
    to_target = sum(route(params, k) is Pool.BATCH for k in KEYS)
    assert abs(to_target / len(KEYS) - weight) < 0.01


def test_split_in_the_other_direction() -> None:
    """Batching -> real-time sends ``weight`` of the keys to REALTIME."""
    params = route_params(current=Pool.BATCH, target=Pool.REALTIME, weight=0.25, batch_p99_ms=40.0)
    share = sum(route(params, k) is Pool.REALTIME for k in KEYS) / len(KEYS)
    assert abs(share - 0.25) < 0.01


def test_weight_zero_and_one_are_exact() -> None:
    """Weight 0 keeps every key on the current pool; weight 1 moves every key."""
    assert all(route(shifting(0.0), k) is Pool.REALTIME for k in KEYS[:2000])
    assert all(route(shifting(1.0), k) is Pool.BATCH for k in KEYS[:2000])


def test_raising_the_weight_only_moves_keys_toward_the_target() -> None:
    """Every key on the target at a weight stays there at every higher weight."""
    weights = [0.1, 0.25, 0.5, 0.75, 1.0]
    previous: set[int] = set()
    for w in weights:
        params = shifting(w)
        now = {i for i, k in enumerate(KEYS[:20_000]) if route(params, k) is Pool.BATCH}
        assert previous <= now
        previous = now


def test_no_transition_serves_the_current_pool() -> None:
    """Without a transition every request goes to the current pool."""
    params = route_params(current=Pool.BATCH, batch_p99_ms=40.0)
    assert {route(params, k) for k in KEYS[:1000]} == {Pool.BATCH}
    params = route_params(current=Pool.REALTIME)
    assert {route(params, k) for k in KEYS[:1000]} == {Pool.REALTIME}


def test_deadline_shorter_than_batch_p99_always_goes_realtime() -> None:
    """A deadline under the batch pool's p99 goes real-time at any weight; at or above it the
    request follows the weights."""
    for weight in (0.1, 0.5, 1.0):
        params = shifting(weight)
        assert all(route(params, k, deadline_ms=39.9) is Pool.REALTIME for k in KEYS[:2000])
        with_deadline = [route(params, k, deadline_ms=40.0) for k in KEYS[:2000]]
        assert with_deadline == [route(params, k) for k in KEYS[:2000]]


def test_deadline_rule_while_batching_is_the_current_pool() -> None:
    """Batching -> real-time: a short deadline goes real-time even at weight 0.1."""
    params = route_params(current=Pool.BATCH, target=Pool.REALTIME, weight=0.1, batch_p99_ms=40.0)
    assert all(route(params, k, deadline_ms=1.0) is Pool.REALTIME for k in KEYS[:1000])


def test_deadline_without_a_realtime_pool_takes_the_batch_pool() -> None:
    """With only a batch pool in force there is nowhere faster: the request goes to BATCH."""
    params = route_params(current=Pool.BATCH, batch_p99_ms=40.0)
    assert route(params, b"k", deadline_ms=1.0) is Pool.BATCH


def test_unknown_batch_p99_sends_every_deadline_realtime() -> None:
    """An unpredictable batch p99 (NaN, None) counts as infinite."""
    for p99 in (None, math.nan, math.inf):
        params = route_params(
            current=Pool.REALTIME, target=Pool.BATCH, weight=1.0, batch_p99_ms=p99
        )
        assert params.batch_p99_ms == math.inf
        assert route(params, b"k", deadline_ms=1e9) is Pool.REALTIME
        assert route(params, b"k") is Pool.BATCH


def test_deadline_class_goes_to_batch_whenever_a_batch_pool_exists() -> None:
    """A class whose requirement is a deadline takes BATCH at any weight (while its deadline is
    not under the batch p99); an SLO class (or none) follows the weights."""
    classes = {"nightly": 3_600_000.0, "tight": 10.0}
    params = shifting(0.1, deadline_classes=classes)
    assert all(route(params, k, traffic_class="nightly") is Pool.BATCH for k in KEYS[:2000])
    # Its class deadline is under the batch p99: real-time.
    assert all(route(params, k, traffic_class="tight") is Pool.REALTIME for k in KEYS[:2000])
    # The request's own deadline overrides the class's.
    assert route(params, b"k", traffic_class="nightly", deadline_ms=5.0) is Pool.REALTIME
    share = sum(route(params, k, traffic_class="interactive") is Pool.BATCH for k in KEYS)
    assert abs(share / len(KEYS) - 0.1) < 0.01


def test_deadline_class_on_a_realtime_only_deployment_stays_realtime() -> None:
    """Without a batch pool a deadline class is served real-time."""
    params = route_params(current=Pool.REALTIME, deadline_classes={"nightly": 1e6})
    assert route(params, b"k", traffic_class="nightly") is Pool.REALTIME


def test_weight_out_of_range_is_rejected() -> None:
    """RouteParams refuses a weight outside [0, 1]."""
    with pytest.raises(ValueError, match="weight"):
        RouteParams(current=Pool.REALTIME, target=Pool.BATCH, weight=1.5)
