"""Leader election's pure rules: who may take a Lease, and which durations are consistent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gitward.kube.leases import Record, Timing, format_time, held_by_other, parse_time

NOW = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


def record(holder: str = "other", *, renewed_ago: float = 1.0, duration: int = 15) -> Record:
    return Record(
        holder=holder,
        duration=duration,
        renew_time=NOW - timedelta(seconds=renewed_ago),
        acquire_time=NOW - timedelta(seconds=60),
        transitions=3,
        resource_version="42",
    )


def test_a_free_or_own_lease_may_be_taken():
    """No holder (released), or this very identity: take it, whatever the times say."""
    assert not held_by_other(record(""), "me", now=NOW, unchanged_for=0.0)
    assert not held_by_other(record("me"), "me", now=NOW, unchanged_for=0.0)


def test_an_unexpired_lease_is_held():
    """renewTime + leaseDurationSeconds still ahead: wait."""
    assert held_by_other(record(renewed_ago=14.9), "me", now=NOW, unchanged_for=14.9)
    assert held_by_other(record(renewed_ago=1), "me", now=NOW, unchanged_for=None)


def test_an_expired_lease_may_be_taken():
    """Past renewTime + duration, and not seen changing within the duration here: take it."""
    assert not held_by_other(record(renewed_ago=15), "me", now=NOW, unchanged_for=15.0)
    assert not held_by_other(record(renewed_ago=300), "me", now=NOW, unchanged_for=None)


def test_a_holder_whose_clock_lags_is_not_robbed_while_it_renews():
    """An old-looking renewTime (the holder's clock behind) but a change seen here 3s ago: still held."""
    assert held_by_other(record(renewed_ago=40), "me", now=NOW, unchanged_for=3.0)


def test_a_lease_never_renewed_counts_as_expired():
    never = Record("other", 15, None, None, 0, "1")
    assert never.expired(NOW)
    assert not held_by_other(never, "me", now=NOW, unchanged_for=None)


def test_record_reads_a_lease_body():
    body = {
        "metadata": {"resourceVersion": "7"},
        "spec": {
            "holderIdentity": "pod-1_abc",
            "leaseDurationSeconds": 6,
            "renewTime": "2026-03-01T12:00:00.250000Z",
            "leaseTransitions": 2,
        },
    }
    read = Record.of(body)
    assert (read.holder, read.duration, read.transitions, read.resource_version) == ("pod-1_abc", 6, 2, "7")
    assert read.renew_time == NOW
    assert read.acquire_time is None
    assert Record.of({}) == Record("", 0, None, None, 0, "")


def test_microtime_round_trip():
    assert format_time(NOW) == "2026-03-01T12:00:00.250000Z"
    assert parse_time(format_time(NOW)) == NOW
    assert parse_time("2026-03-01T12:00:00Z") == NOW.replace(microsecond=0)
    assert parse_time(None) is None
    assert parse_time("yesterday") is None


def test_defaults_are_controller_runtimes():
    assert Timing() == Timing(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)
    assert Timing().request_timeout == 5.0
    assert Timing(6, 4, 1).request_timeout == 2.0


@pytest.mark.parametrize(
    ("durations", "message"),
    [
        ((10, 10, 2), "longer than the renew deadline"),
        ((6, 10, 2), "longer than the renew deadline"),
        ((15, 2, 2), "1.2 x the retry period"),
        ((15, 10, 0), "must be positive"),
        ((0.5, 0.4, 0.1), "at least 1 second"),
    ],
)
def test_inconsistent_durations_are_refused(durations, message):
    """The holder must give up (renew deadline) before a standby may take over (lease duration)."""
    with pytest.raises(ValueError, match=message):
        Timing(*durations)
