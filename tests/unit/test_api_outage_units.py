"""The pure parts of riding out an API server outage: retry delays, kopf's backoffs, Ready while unknown."""

from __future__ import annotations

import itertools
from collections.abc import Sized

import pytest
from urllib3.exceptions import MaxRetryError, ProtocolError

from gitward import handlers, runner
from gitward.api.conditions import Reason
from gitward.kube import cached, watching
from gitward.kube.objects import APIError
from gitward.reconcile.decide import next_delay

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
STEPS = [
    {
        "type": "SourceVerified",
        "status": "True",
        "reason": "Succeeded",
        "message": "",
        "lastTransitionTime": NOW,
    },
    {"type": "Applied", "status": "True", "reason": "Succeeded", "message": "", "lastTransitionTime": NOW},
]
READY = {
    "type": "Ready",
    "status": "True",
    "reason": "Succeeded",
    "message": "every step succeeded",
    "observedGeneration": 3,
    "lastTransitionTime": NOW,
}


def ready_of(conditions: list[dict[str, object]]) -> dict[str, object]:
    return next(c for c in conditions if c["type"] == "Ready")


@pytest.mark.parametrize("jitter", [0.0, 0.3, 0.999])
def test_a_poll_waits_the_interval_as_before(jitter: float) -> None:
    assert runner.retry_delay(interval=60, retry_after=None, failures=0, jitter=jitter) == next_delay(
        interval=60, retry_after=None, failures=0, jitter=jitter
    )


@pytest.mark.parametrize(("failures", "jitter"), list(itertools.product(range(1, 10), [0.0, 0.5, 0.999])))
def test_a_retry_waits_between_half_and_all_of_its_backoff_and_never_past_the_interval(
    failures: int, jitter: float
) -> None:
    backoff = next_delay(interval=60, retry_after=15, failures=failures, jitter=jitter)
    delay = runner.retry_delay(interval=60, retry_after=15, failures=failures, jitter=jitter)
    assert backoff / 2 <= delay <= backoff <= 60


def test_apps_that_failed_together_do_not_retry_together() -> None:
    delays = {runner.retry_delay(interval=10, retry_after=15, failures=3, jitter=j / 10) for j in range(10)}
    assert len(delays) == 10
    assert min(delays) == 5.0
    assert max(delays) < 10.0


def test_kopf_retries_without_end_from_one_second_to_at_most_ten_each_request_afresh() -> None:
    backoffs = handlers.KopfBackoffs()
    assert not isinstance(backoffs, Sized)  # kopf reads an unsized iterable as: retry for ever
    first = list(itertools.islice(backoffs, 200))
    assert 0.5 <= first[0] <= 1.0
    assert all(0 < delay <= handlers.KopfBackoffs.cap for delay in first)
    assert max(first[5:]) > handlers.KopfBackoffs.cap / 2  # it grows to the cap ...
    assert len(set(first[5:])) > 100  # ... jittered there
    again = list(itertools.islice(backoffs, 3))
    assert again[0] <= 1.0  # a new request starts from the beginning


def test_ready_becomes_unknown_naming_since_when_and_the_steps_stay() -> None:
    conditions = runner.unknown_since([*STEPS, READY], "2026-01-01T00:01:02Z", generation=4, now=LATER)
    ready = ready_of(conditions)
    assert (ready["status"], ready["reason"]) == ("Unknown", Reason.API_UNAVAILABLE)
    assert "did not answer from 2026-01-01T00:01:02Z" in str(ready["message"])
    assert ready["observedGeneration"] == 4
    assert ready["lastTransitionTime"] == LATER  # True -> Unknown is a transition
    assert [c for c in conditions if c["type"] != "Ready"] == STEPS


def test_ready_already_unknown_keeps_its_transition_time() -> None:
    unknown = {**READY, "status": "Unknown", "reason": "APIUnavailable", "message": "earlier"}
    conditions = runner.unknown_since([unknown], "2026-01-01T00:01:02Z", generation=3, now=LATER)
    assert ready_of(conditions)["lastTransitionTime"] == NOW


def test_an_attempt_that_found_nothing_new_puts_the_ready_from_before_the_outage_back() -> None:
    marked = runner.unknown_since([*STEPS, READY], NOW, generation=3, now=NOW)
    marker = ready_of(marked)
    restored = runner.restored_ready(marked, marker, READY, now=LATER)
    assert restored is not None
    ready = ready_of(restored)
    assert {k: ready[k] for k in ("status", "reason", "message", "observedGeneration")} == {
        "status": "True",
        "reason": "Succeeded",
        "message": "every step succeeded",
        "observedGeneration": 3,
    }
    assert ready["lastTransitionTime"] == LATER  # Unknown -> True: a transition, now
    assert [c for c in restored if c["type"] != "Ready"] == STEPS


def test_an_attempt_that_wrote_its_own_ready_is_left_alone() -> None:
    marked = runner.unknown_since([*STEPS, READY], NOW, generation=3, now=NOW)
    marker = ready_of(marked)
    refused = {**READY, "status": "False", "reason": "UnsignedCommit", "message": "not signed"}
    written = [*STEPS, refused]
    assert runner.restored_ready(written, marker, READY, now=LATER) is None


def test_nothing_to_put_back_when_ready_was_already_unknown_or_not_gitwards() -> None:
    marked = runner.unknown_since([READY], NOW, generation=3, now=NOW)
    marker = ready_of(marked)
    unknown = {**READY, "status": "Unknown", "reason": "APIUnavailable"}
    assert runner.restored_ready(marked, marker, unknown, now=LATER) is None
    foreign = {**READY, "reason": "SomebodyElses"}
    assert runner.restored_ready(marked, marker, foreign, now=LATER) is None


@pytest.mark.parametrize("jitter", [0.0, 0.999])
def test_health_watches_come_back_within_seconds_of_an_outage(jitter: float) -> None:
    delays = [watching.retry_delay(n, cap=watching.RETRY_CAP, jitter=jitter) for n in range(1, 30)]
    assert delays[0] <= 0.5
    assert max(delays) <= watching.RETRY_CAP
    assert delays == sorted(delays)


def test_cached_reads_watch_again_within_seconds_of_an_outage_and_back_off_from_a_refusal() -> None:
    assert cached.retry_delay(1, cap=cached.RETRY_CAP, jitter=0.0) == 1.0
    assert (
        max(cached.retry_delay(n, cap=cached.RETRY_CAP, jitter=0.999) for n in range(60)) <= cached.RETRY_CAP
    )
    assert cached.retry_delay(20, cap=cached.REFUSED_CAP, jitter=0.999) > 100


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (MaxRetryError(None, "/api", reason=ConnectionRefusedError()), True),
        (ProtocolError("connection broken"), True),
        (ConnectionResetError(), True),
        (APIError(503, "unavailable"), True),
        (APIError(429, "slow down"), True),
        (APIError(0, "cannot reach the API server: MaxRetryError"), True),
        (APIError(403, "forbidden"), False),
        (APIError(410, "gone"), False),
        (ValueError("not JSON"), False),
    ],
)
def test_what_counts_as_no_answer_for_a_cached_watch(error: Exception, transient: bool) -> None:  # noqa: FBT001
    assert cached._transient(error) is transient  # noqa: SLF001 - the classification itself
