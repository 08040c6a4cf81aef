"""Results one app's reconcile can lend another: computed once, single-flight, for a while.

When a thousand apps read one source and a new head arrives, each must
verify it against its own baseline and its tenant's keys, and each reads
the commit's tree to render its own path. Those inputs are almost always
the same, so the verification (a ``gpg`` or ``ssh-keygen`` per commit) is
keyed by all of them and done once, and so is the tree listing. A refusal
is shared the same way (a transient failure is not kept). Entries expire
(a key can expire while a result is cached) and the least recently used go
first past ``size``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gitward.errors import GitwardError, Stalled

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    lock: threading.Lock = field(default_factory=threading.Lock)
    expires: float = float("-inf")
    value: T | None = None
    error: GitwardError | None = None


class SharedResults(Generic[T]):
    """A single-flight TTL + LRU cache of results (and of pipeline refusals). Thread-safe."""

    def __init__(self, *, ttl: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry[T]] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0

    def _entry(self, key: Hashable) -> _Entry[T]:
        with self._lock:
            entry = self._entries.pop(key, None) or _Entry()
            self._entries[key] = entry
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
            return entry

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The result for ``key``: cached, or computed once while other callers for it wait."""
        entry = self._entry(key)
        with entry.lock:
            if entry.expires <= self._clock():
                self.computed += 1
                try:
                    entry.value, entry.error = compute(), None
                except Stalled as error:  # a refusal is as shareable as a result; a transient error is not
                    entry.value, entry.error = None, error
                entry.expires = self._clock() + self._ttl
            if entry.error is not None:
                raise entry.error.again()
            assert entry.value is not None  # noqa: S101 - set together with a None error
            return entry.value
