"""Error kinds of the reconcile pipeline, and what each means for retrying.

Every step fails with a :class:`GitwardError` that carries a condition
:class:`~gitward.api.conditions.Reason`. Its kind says what to do next, as in
Flux: :class:`Stalled` needs a human (a refused commit must not be retried in
a hot loop), :class:`Waiting` is retried after a delay (a flaky git server).
The kopf wiring maps these onto ``kopf.PermanentError`` and
``kopf.TemporaryError``; no step knows about kopf.
"""

from __future__ import annotations

from typing import Self

from gitward.api.conditions import Reason

MAX_MESSAGE_CHARS = 1024
_TRUNCATED = " ... (truncated)"


class GitwardError(Exception):
    """A pipeline failure with the condition reason that names its cause."""

    reason: Reason

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        self.message = truncate(message)
        # The branch head the failure is about, when it is known before a commit could be verified
        # (a fetch over budget): the refusal is then remembered for that head and not retried.
        self.commit = ""
        super().__init__(f"{reason}: {self.message}")

    def again(self) -> Self:
        """A fresh copy to raise once more (a shared result raised in many threads, each its own)."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.args = self.args
        return clone


class Stalled(GitwardError):
    """Retrying will not help until a human changes something (the commit, the spec, the tenant)."""


class Waiting(GitwardError):
    """A transient failure: retry after ``retry_after`` seconds."""

    def __init__(self, reason: Reason, message: str, *, retry_after: float = 30.0) -> None:
        super().__init__(reason, message)
        self.retry_after = retry_after


def truncate(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Bound a message so an API server or git error cannot flood status or events."""
    if len(message) <= limit:
        return message
    return message[: limit - len(_TRUNCATED)] + _TRUNCATED
