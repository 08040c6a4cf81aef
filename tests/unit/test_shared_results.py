"""SharedResults: one verification per (commit, baseline, keys), however many apps ask at once."""

from __future__ import annotations

import threading

import pytest

from gitward.api.conditions import Reason
from gitward.errors import Stalled, Waiting
from gitward.sharing import SharedResults


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_callers_asking_together_share_one_computation():
    shared: SharedResults[str] = SharedResults(ttl=60, size=8)
    computed = []
    gate = threading.Barrier(12)
    slow = threading.Event()

    def compute() -> str:
        computed.append(1)
        slow.wait(0.2)
        return "verified"

    results = []

    def ask() -> None:
        gate.wait()
        results.append(shared.get(("commit", "base"), compute))

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == ["verified"] * 12
    assert len(computed) == 1


def test_a_refusal_is_shared_and_each_caller_raises_its_own_copy():
    shared: SharedResults[str] = SharedResults(ttl=60, size=8)
    calls = []

    def refuse() -> str:
        calls.append(1)
        raise Stalled(Reason.UNSIGNED_COMMIT, "commit abc is not signed")

    raised = []
    for _ in range(3):
        with pytest.raises(Stalled) as caught:
            shared.get("k", refuse)
        raised.append(caught.value)
    assert len(calls) == 1
    assert {e.reason for e in raised} == {Reason.UNSIGNED_COMMIT}
    assert len({id(e) for e in raised}) == 3


def test_a_transient_failure_is_not_kept():
    shared: SharedResults[str] = SharedResults(ttl=60, size=8)
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise Waiting(Reason.FETCH_FAILED, "gpg timed out")
        return "verified"

    with pytest.raises(Waiting):
        shared.get("k", flaky)
    assert shared.get("k", flaky) == "verified"
    assert len(attempts) == 2


def test_results_expire_and_the_least_recently_used_go_first():
    clock = Clock()
    shared: SharedResults[int] = SharedResults(ttl=10, size=2, clock=clock)
    counter = iter(range(100))
    assert shared.get("a", lambda: next(counter)) == 0
    assert shared.get("a", lambda: next(counter)) == 0
    clock.now = 11  # a key may have expired meanwhile: verify again
    assert shared.get("a", lambda: next(counter)) == 1
    shared.get("b", lambda: next(counter))
    shared.get("c", lambda: next(counter))  # "a" is the least recently used of three: gone
    assert shared.get("a", lambda: next(counter)) == 4
