"""The health rules the client keeps per manager (`anytcm._core.managers`), without a clock.

The pool passes `now` in; here it is a number, and the jitter draws are pinned, so each rule is
checked exactly. The same rules over real processes are in test_several_managers.py.
"""

from __future__ import annotations

import pytest

from anytcm._core.managers import DeadTime, LeastBusy, Managers, RoundRobin

URLS = ["ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws", "ws://127.0.0.1:3/ws"]


def upper(low: float, high: float) -> float:
    return high


def managers(urls: list[str] = URLS) -> Managers:
    return Managers(urls, DeadTime(uniform=upper))


def test_urls_must_be_given_once_and_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Managers([])
    with pytest.raises(ValueError, match="given twice"):
        Managers([URLS[0], URLS[0]])


def test_dead_time_doubles_from_one_second_to_thirty_with_jitter_in_the_upper_half() -> None:
    ceilings = [DeadTime(uniform=upper).seconds(n) for n in range(1, 9)]
    assert ceilings == [1, 2, 4, 8, 16, 30, 30, 30]
    assert DeadTime(uniform=lambda low, high: low).seconds(3) == 2.0  # the upper half: [2, 4]
    assert DeadTime(uniform=upper).seconds(10_000) == 30  # no overflow, ever
    with pytest.raises(ValueError):
        DeadTime(base=0)


def test_connections_spread_evenly_over_live_managers() -> None:
    ms = managers()
    placed = []
    for _ in range(6):
        m = ms.place(now=0.0)
        assert m is not None
        m.connections += 1
        placed.append(m.url)
    assert sorted(placed) == sorted(URLS * 2)


def test_a_failed_manager_is_left_alone_until_its_time_then_tried_again() -> None:
    ms = managers()
    first, second, third = ms.all
    assert ms.failed(first, ConnectionError("refused"), now=10.0) == 1.0
    assert first.state == "dead"
    assert first.consecutive_failures == 1
    assert {ms.place(10.5) for _ in range(4)} <= {second, third}
    assert ms.failed(first, ConnectionError("refused"), now=11.0) == 2.0  # doubling
    assert first.dead_until == 13.0
    ms.failed(second, ConnectionError("refused"), now=11.0)
    ms.failed(third, ConnectionError("refused"), now=11.0)
    assert ms.place(11.5) is None  # every manager left alone: the pool waits
    assert ms.next_trial(11.5) == 12.0
    assert ms.place(12.0) in (second, third)  # their time is up: a trial
    ms.connected(first)
    assert (first.state, first.consecutive_failures, first.connects) == ("live", 0, 1)


def test_a_draining_manager_gets_no_new_connection_for_at_least_the_floor() -> None:
    ms = managers()
    first = ms.all[0]
    ms.draining(first, ConnectionError("SYSTEM_SHUTDOWN"), now=0.0, floor=5.0)
    assert first.state == "draining"
    assert all(ms.place(4.9) is not first for _ in range(5))
    status = first.status(now=1.0)
    assert (status.state, status.retry_in) == ("draining", 4.0)
    assert status.last_failure == "SYSTEM_SHUTDOWN"


def test_all_down_message_names_each_manager_and_its_last_failure() -> None:
    ms = managers()
    ms.failed(ms.all[0], ConnectionError("connection refused"), now=0.0)
    ms.draining(ms.all[1], ConnectionError("server shutting down"), now=0.0, floor=1.0)
    message = ms.all_down_message(now=0.0)
    assert f"{URLS[0]}: dead, connection refused" in message
    assert f"{URLS[1]}: draining, server shutting down" in message
    assert f"{URLS[2]}: live, no connection yet" in message


def test_rebalancing_moves_connections_only_from_an_over_full_live_manager() -> None:
    ms = managers()
    a, b, c = ms.all
    a.connections, b.connections, c.connections = 3, 1, 0
    assert ms.rebalance_excess() is a
    a.connections, b.connections, c.connections = 2, 1, 1
    assert ms.rebalance_excess() is None
    c.state = "dead"
    a.connections, b.connections, c.connections = 4, 0, 0
    assert ms.rebalance_excess() is a
    b.state = "dead"
    assert ms.rebalance_excess() is None  # one live manager: nothing to balance


def test_selection_policies() -> None:
    ms = managers()
    a, b, c = ms.all
    rr = RoundRobin()
    chosen = [rr.choose(ms.all).url for _ in range(6)]
    assert sorted(chosen) == sorted(URLS * 2)
    a.in_flight, b.in_flight, c.in_flight = 3, 0, 1
    assert LeastBusy().choose(ms.all) is b
