"""One source per (tenant, URL, branch, credentials), shared by every app that reads it.

A thousand apps that read one repository's branch are one source: one
``ls-remote`` per freshness window, not one per app, and one fetch per new
head into one cache repository, not a thousand. :class:`SharedSources`
holds, per source, a lock and the last head seen:

- :meth:`SharedSources.head` answers from the last ``ls-remote`` when it
  started after ``fresher_than`` (a poll passes "one interval ago", a
  webhook passes the moment it arrived). Callers that ask together wait
  for the one ``ls-remote`` in flight instead of starting their own. A
  failure is remembered for the same window, so a server that is down
  costs one attempt per window too.
- :meth:`SharedSources.fetch` fetches under the source's lock into the
  source's one cache repository, so two apps never race to create or
  update it (the ``FileExistsError`` of a per-app cache is gone with it).
- A server that does not answer (:class:`~gitward.source.runner.Unavailable`)
  is an outage of the source, remembered from its first failed attempt
  (wall-clock UTC) until the server answers again: every failure during it
  says the same "has not answered since", so the status an app writes
  stays the same from one retry to the next.

The tenant is part of the key: budgets and credentials are the tenant's,
and one tenant's fetch never writes another tenant's cache. What is
fetched is still verified per app, against that app's baseline and its
tenant's keys; sharing saves the network and the disk, never a check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gitward.api.budgets import Budgets
from gitward.errors import GitwardError
from gitward.source import fetch as fetching
from gitward.source.allow import AllowedSource
from gitward.source.credentials import Credentials
from gitward.source.runner import FetchOptions, Unavailable, kube_time

Clock = Callable[[], float]
WallClock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class SourceKey:
    """What makes two apps read the same source."""

    scope: str  # the tenant
    url: str
    branch: str
    credentials: str  # a digest of the credentials, never the values

    @classmethod
    def of(cls, scope: str, source: AllowedSource, credentials: Credentials | None) -> SourceKey:
        """The key of ``source`` read by ``scope`` with ``credentials``."""
        return cls(scope, source.url.for_git, source.branch, credentials_digest(credentials))

    @property
    def name(self) -> str:
        """A stable, unguessable-without-the-key directory name part."""
        text = f"{self.scope}\0{self.url}\0{self.branch}\0{self.credentials}"
        return hashlib.sha256(text.encode()).hexdigest()


def credentials_digest(credentials: Credentials | None) -> str:
    """A digest that tells credentials apart without holding them."""
    if credentials is None:
        return ""
    parts = (
        credentials.username,
        credentials.password,
        credentials.bearer_token,
        credentials.ssh_identity,
        credentials.known_hosts,
        credentials.ca_cert,
    )
    return hashlib.sha256("\0".join(p or "" for p in parts).encode()).hexdigest()


@dataclass
class _Source:
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = float("-inf")  # when the last ls-remote started
    head: str = ""
    error: GitwardError | None = None
    remote_checks: int = 0
    fetches: int = 0
    unavailable_since: str = ""  # when the server stopped answering (Kubernetes time), "" while it answers


class SharedSources:
    """Heads and fetches per source, coalesced across the apps that read it. Thread-safe."""

    def __init__(
        self, options: FetchOptions, *, clock: Clock = time.monotonic, wall: WallClock = _utc_now
    ) -> None:
        self.options = options
        self._clock = clock
        self._wall = wall
        self._sources: dict[SourceKey, _Source] = {}
        self._lock = threading.Lock()

    def _source(self, key: SourceKey) -> _Source:
        with self._lock:
            state = self._sources.get(key)
            if state is None:
                state = self._sources[key] = _Source()
            return state

    def head(
        self,
        key: SourceKey,
        source: AllowedSource,
        *,
        credentials: Credentials | None,
        budgets: Budgets | None,
        fresher_than: float,
    ) -> str:
        """The branch head, from an ``ls-remote`` that started after ``fresher_than`` (monotonic)."""
        state = self._source(key)
        with state.lock:
            if state.started < fresher_than:
                state.started = self._clock()
                state.remote_checks += 1
                try:
                    with self._outage(state):
                        state.head, state.error = (
                            fetching.remote_head(
                                source, credentials=credentials, options=self.options, budgets=budgets
                            ),
                            None,
                        )
                except GitwardError as error:
                    state.head, state.error = "", error
            if state.error is not None:
                raise state.error.again()
            return state.head

    def fetch(
        self,
        key: SourceKey,
        source: AllowedSource,
        *,
        credentials: Credentials | None,
        budgets: Budgets | None,
        head: str,
    ) -> fetching.Checkout:
        """``head`` in the source's cache repository, fetched at most once however many apps ask."""
        state = self._source(key)
        with state.lock, self._outage(state):
            checkout = fetching.fetch(
                source,
                cache=self.cache_dir(key),
                credentials=credentials,
                options=self.options,
                budgets=budgets,
                head=head,
            )
            state.fetches += checkout.fetched
            return checkout

    @contextmanager
    def _outage(self, state: _Source) -> Iterator[None]:
        """Keep the source's outage (under its lock): begun by a failure to answer, ended by any answer.

        A server that refuses (credentials, a missing branch) answered, so that ends the outage too:
        "has not answered since" must never outlive an answer.
        """
        try:
            yield
        except Unavailable as error:
            state.unavailable_since = state.unavailable_since or kube_time(self._wall())
            raise error.since_then(state.unavailable_since) from None
        except GitwardError:
            state.unavailable_since = ""
            raise
        state.unavailable_since = ""

    def cache_dir(self, key: SourceKey) -> Path:
        """The source's cache repository: stable for the key, unguessable without the cache's secret."""
        return fetching.keyed_cache_dir(self.options.cache_root, key.name)

    def counts(self, key: SourceKey) -> tuple[int, int]:
        """How many remote checks and fetches the source has made (for tests and metrics)."""
        state = self._source(key)
        return state.remote_checks, state.fetches

    def unavailable_since(self, key: SourceKey) -> str:
        """Since when the source's server has not answered (Kubernetes time), or "" if it answers."""
        return self._source(key).unavailable_since
