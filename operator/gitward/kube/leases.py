"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

One Lease per shard (``gitward-shard-<key>`` in the operator namespace) is
held by at most one replica at a time; only the holder reconciles. The rules
are those of client-go's ``leaderelection`` (which controller-runtime uses):

- A candidate takes the Lease when nobody holds it (no Lease yet, or an empty
  ``holderIdentity``) or when it has expired: ``renewTime +
  leaseDurationSeconds`` is past and, as a guard against clock skew, the
  candidate has not itself seen the Lease change within the lease duration.
  Every write carries the ``resourceVersion`` it read (optimistic
  concurrency): when two candidates race, the API server answers the loser
  ``409 Conflict`` and the loser simply goes on waiting.
- The holder renews every retry period in a background thread. If no renewal
  has succeeded for the renew deadline (shorter than the lease duration), or
  the Lease shows another holder, the process is no longer sure it is the only
  one reconciling: it logs and exits hard (``os._exit``), before anyone else can
  take the Lease, as controller-runtime's manager does on "leader election
  lost". There is no attempt to keep running as a standby: the Deployment
  restarts the container, which waits as a standby.
- On a graceful shutdown the holder releases the Lease (empty holder, a
  one-second duration), so a standby takes over at its next try rather than
  after the lease duration.

This is the only module that writes Leases; requests go through the client's
auth, TLS and connection pool like :mod:`gitward.kube.objects`, each with a
timeout of half the renew deadline (client-go's choice), so a hung request
cannot hold a renewal past its deadline.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from urllib3.util import Retry

from gitward.kube.http import Connection
from gitward.kube.objects import APIError, Resource, fetch, json_body

LEASES = Resource("coordination.k8s.io", "v1", "Lease", "leases", namespaced=True)
LOST_EXIT_CODE = 1  # what the process exits with when it can no longer be sure it holds its Lease
JITTER = 1.2  # client-go's JitterFactor: a candidate retries every retry period plus up to 120% of it
_CONFLICT, _NOT_FOUND = 409, 404
_LOG = structlog.get_logger("gitward.leases")
# A connection that fails is tried once more (nothing was sent); an answer that does not come is not
# waited for twice: the renewal is tried again after the retry period anyway.
_RETRIES = Retry(total=1, connect=1, read=0, redirect=0, status=0, other=0, raise_on_status=False)


@dataclass(frozen=True, slots=True)
class Timing:
    """client-go's three durations, in seconds (controller-runtime's defaults)."""

    lease_duration: float = 15.0  # how long a standby waits after the last renewal before taking over
    renew_deadline: float = 10.0  # how long the holder keeps trying to renew before it exits
    retry_period: float = 2.0  # how often the holder renews and a standby tries

    def __post_init__(self) -> None:
        if min(self.lease_duration, self.renew_deadline, self.retry_period) <= 0:
            raise ValueError("lease duration, renew deadline and retry period must be positive")
        if self.lease_duration < 1:
            raise ValueError("the lease duration must be at least 1 second (the Lease counts whole seconds)")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError("the lease duration must be longer than the renew deadline")
        if self.renew_deadline <= JITTER * self.retry_period:
            raise ValueError(f"the renew deadline must be longer than {JITTER} x the retry period")

    @property
    def request_timeout(self) -> float:
        """Each request's timeout: half the renew deadline, at least one second (as client-go)."""
        return max(1.0, self.renew_deadline / 2)


@dataclass(frozen=True, slots=True)
class Record:
    """What a Lease says: who holds it, since when, until when."""

    holder: str
    duration: int
    renew_time: datetime | None
    acquire_time: datetime | None
    transitions: int
    resource_version: str

    @classmethod
    def of(cls, lease: dict[str, Any]) -> Record:
        """Read a Lease body (missing fields read as empty)."""
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=int(spec.get("leaseDurationSeconds") or 0),
            renew_time=parse_time(spec.get("renewTime")),
            acquire_time=parse_time(spec.get("acquireTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
        )

    def expired(self, now: datetime) -> bool:
        """``renewTime + leaseDurationSeconds`` is past (a Lease never renewed counts as expired)."""
        return self.renew_time is None or self.renew_time + timedelta(seconds=self.duration) <= now


def held_by_other(record: Record, identity: str, *, now: datetime, unchanged_for: float | None) -> bool:
    """Whether someone else holds the Lease, so ``identity`` must wait. Pure.

    ``unchanged_for`` is how long (by this process's monotonic clock) the
    caller has seen this very version of the Lease, or None when it first saw
    it already expired. The Lease is held while it is unexpired by its own
    ``renewTime`` *or* by that local observation: a holder whose clock runs
    behind (an old-looking ``renewTime``) is not robbed while it still renews.
    """
    if not record.holder or record.holder == identity:
        return False
    seen_recently = unchanged_for is not None and unchanged_for < record.duration
    return not record.expired(now) or seen_recently


def format_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: object) -> datetime | None:
    """A MicroTime (or Time) from a Lease, or None if absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def new_identity() -> str:
    """A holder identity unique to this process: the host (a pod's name) and a random suffix, as client-go."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}"


def exit_hard(lease: str, identity: str, why: str) -> None:
    """Leadership is lost: log it and end the process at once, with no cleanup that could still reconcile."""
    _LOG.critical("leader election lost: exiting", lease=lease, identity=identity, why=why)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream must not stop the exit
            stream.flush()
    os._exit(LOST_EXIT_CODE)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    """Acquire, renew and release one Lease for one identity.

    ``on_lost(why)`` is called (once, from a background thread) when a holder
    can no longer be sure it holds the Lease; by default it exits the process.
    ``clock`` is the wall clock written into and compared with the Lease.
    """

    def __init__(
        self,
        api: Connection,
        *,
        namespace: str,
        name: str,
        identity: str | None = None,
        timing: Timing | None = None,
        on_lost: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity or new_identity()
        self.timing = timing or Timing()
        self.clock = clock
        self._on_lost = on_lost or (lambda why: exit_hard(self.name, self.identity, why))
        self._lock = threading.Lock()
        self._leading = False
        self._last_renewal = 0.0  # monotonic start of the last successful acquire or renew
        self._observed_version = ""
        self._observed_at: float | None = None
        self._observed_holder = ""
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        """Whether this process holds the Lease (as of its last successful write)."""
        with self._lock:
            return self._leading

    @property
    def observed_holder(self) -> str:
        """The holder the Lease named when this process last read it ('' if free or never read)."""
        with self._lock:
            return self._observed_holder

    def _observe(self, record: Record, now: datetime) -> float | None:
        """Note the version seen; return how long it has been seen unchanged (None: first seen expired)."""
        mono = time.monotonic()
        with self._lock:
            self._observed_holder = record.holder
            if record.resource_version != self._observed_version:
                self._observed_version = record.resource_version
                self._observed_at = None if record.expired(now) else mono
            return None if self._observed_at is None else mono - self._observed_at

    # -- one attempt ---------------------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One attempt to take or keep the Lease; True if this process holds it now.

        Any API error, and losing a race (409), is a False: the caller tries
        again after the retry period.
        """
        started = time.monotonic()
        now = self.clock()
        try:
            lease = self._get()
        except APIError as error:
            _LOG.warning("cannot read the lease", lease=self.name, error=error.message, status=error.status)
            return False
        if lease is None:
            return self._write_new(now, started)
        record = Record.of(lease)
        unchanged_for = self._observe(record, now)
        if self.leading and record.holder != self.identity:
            self._lose(f"the lease names another holder: {record.holder or '(none)'}")
            return False
        if held_by_other(record, self.identity, now=now, unchanged_for=unchanged_for):
            return False
        ours = record.holder == self.identity
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": math.ceil(self.timing.lease_duration),
            "acquireTime": format_time(record.acquire_time if ours and record.acquire_time else now),
            "renewTime": format_time(now),
            "leaseTransitions": record.transitions if ours else record.transitions + 1,
        }
        lease["spec"] = {**(lease.get("spec") or {}), **spec}
        try:
            self._request("PUT", LEASES.path(namespace=self.namespace, name=self.name), lease)
        except APIError as error:
            if error.status == _CONFLICT:
                _LOG.info("lost a race for the lease", lease=self.name, identity=self.identity)
            else:
                _LOG.warning(
                    "cannot write the lease", lease=self.name, error=error.message, status=error.status
                )
            return False
        self._won(started, previous=record.holder)
        return True

    def _write_new(self, now: datetime, started: float) -> bool:
        body = {
            "apiVersion": f"{LEASES.group}/{LEASES.version}",
            "kind": LEASES.kind,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {
                    "app.kubernetes.io/name": "gitward",
                    "app.kubernetes.io/component": "leader-election",
                },
            },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": math.ceil(self.timing.lease_duration),
                "acquireTime": format_time(now),
                "renewTime": format_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            self._request("POST", LEASES.path(namespace=self.namespace), body)
        except APIError as error:
            if error.status == _CONFLICT:
                _LOG.info("lost a race to create the lease", lease=self.name, identity=self.identity)
            else:
                _LOG.warning(
                    "cannot create the lease", lease=self.name, error=error.message, status=error.status
                )
            return False
        self._won(started, previous="")
        return True

    def _won(self, started: float, *, previous: str) -> None:
        with self._lock:
            first = not self._leading
            self._leading = True
            self._last_renewal = started
            self._observed_holder = self.identity
        if first:
            _LOG.info(
                "acquired the lease", lease=self.name, namespace=self.namespace, identity=self.identity,
                previous_holder=previous or None,
            )  # fmt: skip

    # -- loops -----------------------------------------------------------------------------------------------

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until this process holds the Lease (True) or ``stop`` is set (False)."""
        stop = stop or threading.Event()
        waiting_on: str | None = None
        while not stop.is_set():
            if self._attempt():
                return True
            holder = self.observed_holder
            if holder != waiting_on:
                waiting_on = holder
                _LOG.info(
                    "standing by: waiting for the lease", lease=self.name, namespace=self.namespace,
                    holder=holder or None, identity=self.identity,
                )  # fmt: skip
            delay = self.timing.retry_period * (1 + random.random() * JITTER)  # noqa: S311 - spreads retries
            stop.wait(delay)
        return False

    def start_renewing(self) -> None:
        """Renew every retry period in the background; a watchdog calls ``on_lost`` past the deadline."""
        if not self.leading:
            raise RuntimeError("start_renewing() needs the lease: call acquire() first")
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._renew_loop, name="gitward-lease-renew", daemon=True),
            threading.Thread(target=self._watchdog, name="gitward-lease-watchdog", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _attempt(self) -> bool:
        """:meth:`try_acquire_or_renew`, with any failure at all a False: the loops must outlive it.

        Request failures are :class:`APIError` already; anything else (a bug, an odd
        answer) is logged and, like them, tried again after the retry period. A renew
        thread that died would leave only the watchdog, which gives the Lease up.
        """
        try:
            return self.try_acquire_or_renew()
        except Exception:  # noqa: BLE001 - logged; the next retry period tries again
            _LOG.exception("lease attempt failed unexpectedly", lease=self.name, identity=self.identity)
            return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.timing.retry_period):
            if self._lost.is_set():
                return
            if not self._attempt():
                _LOG.warning("lease renewal failed", lease=self.name, identity=self.identity)

    def _watchdog(self) -> None:
        tick = min(0.25, self.timing.retry_period / 4)
        while not self._stop.wait(tick):
            with self._lock:
                late = time.monotonic() - self._last_renewal
            if late > self.timing.renew_deadline:
                self._lose(
                    f"no renewal succeeded for {late:.1f}s (renew deadline {self.timing.renew_deadline}s)"
                )
                return

    def _lose(self, why: str) -> None:
        if self._lost.is_set():
            return
        self._lost.set()
        with self._lock:
            self._leading = False
        self._stop.set()
        self._on_lost(why)

    def stop_renewing(self) -> None:
        """Stop the renewal and the watchdog threads (the Lease is kept until it expires or is released)."""
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=self.timing.renew_deadline + 1)
        self._threads = []

    def release(self) -> bool:
        """Stop renewing and give the Lease up at once, if this process holds it; True if it was released."""
        self.stop_renewing()
        if not self.leading or self._lost.is_set():
            return False
        with self._lock:
            self._leading = False
        try:
            lease = self._get()
            if lease is None or Record.of(lease).holder != self.identity:
                return False
            now = format_time(self.clock())
            lease["spec"] = {
                **(lease.get("spec") or {}),
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "acquireTime": now,
                "renewTime": now,
            }
            self._request("PUT", LEASES.path(namespace=self.namespace, name=self.name), lease)
        except APIError as error:
            _LOG.warning(
                "cannot release the lease", lease=self.name, error=error.message, status=error.status
            )
            return False
        _LOG.info("released the lease", lease=self.name, identity=self.identity)
        return True

    # -- requests --------------------------------------------------------------------------------------------

    def _get(self) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._request(
                "GET", LEASES.path(namespace=self.namespace, name=self.name)
            )
        except APIError as error:
            if error.status == _NOT_FOUND:
                return None
            raise
        return found

    def _request(self, method: str, path: str, body: object = None) -> Any:  # noqa: ANN401 - raw JSON
        """One request with a bounded timeout; raises :class:`APIError` for any failure."""
        answer = fetch(
            self.api,
            method,
            path,
            body=json_body(body),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            timeout=self.timing.request_timeout,
            retries=_RETRIES,
        )
        return answer.json_object()
