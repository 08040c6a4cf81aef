"""Error kinds carry their reason and bounded messages."""

from __future__ import annotations

from gitward.api.conditions import Reason
from gitward.errors import MAX_MESSAGE_CHARS, Stalled, Waiting, truncate


def test_errors_carry_reason_and_retry_hint():
    """Stalled and Waiting keep the reason; Waiting says when to retry."""
    stalled = Stalled(Reason.UNSIGNED_COMMIT, "commit abc is not signed")
    waiting = Waiting(Reason.FETCH_FAILED, "connection refused", retry_after=12.5)
    assert stalled.reason is Reason.UNSIGNED_COMMIT
    assert str(stalled) == "UnsignedCommit: commit abc is not signed"
    assert (waiting.reason, waiting.retry_after) == (Reason.FETCH_FAILED, 12.5)


def test_long_messages_are_truncated():
    """An API server or git error cannot flood status: messages are bounded."""
    message = Stalled(Reason.DRY_RUN_FAILED, "x" * 10_000).message
    assert len(message) == MAX_MESSAGE_CHARS
    assert message.endswith("(truncated)")
    assert truncate("short") == "short"
