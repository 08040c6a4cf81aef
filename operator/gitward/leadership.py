"""``gitward run --leader-elect``: reconcile only while holding the shard's Lease.

A replica first stands by: it runs no kopf, no webhook server and no
reconcile, and answers only its liveness endpoint (so the kubelet does not
restart a healthy standby; the readiness probe, on the webhook port, fails,
so the shard's Service routes push webhooks to the leader alone). Once it
holds the Lease it renews it in the background and runs the operator. When
the operator stops gracefully, the reconciles still running in worker
threads are waited for *while the Lease is still renewed*, and only then is
the Lease released, so a standby never starts while this process still
applies. A lost Lease ends the process at once (``gitward.kube.leases``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

import structlog

from gitward.kube.leases import LeaderElector

_LOG = structlog.get_logger("gitward.leadership")


class _Liveness(BaseHTTPRequestHandler):
    path_served = "/healthz"

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path != self.path_served:
            self.send_error(404)
            return
        body = b'{"standby": true}\n'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401 - the base class's signature
        """Probes are not logged."""


@contextlib.contextmanager
def standby_liveness(endpoint: str | None) -> Iterator[None]:
    """Answer ``endpoint`` (kopf's ``--liveness`` URL) while standing by; nothing if it is empty."""
    if not endpoint:
        yield
        return
    url = urllib.parse.urlsplit(endpoint)
    handler = type("Liveness", (_Liveness,), {"path_served": url.path or "/"})
    server = ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 80), handler)  # noqa: S104 - as kopf's
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="gitward-standby-liveness", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM or SIGINT while standing by ends the wait (an orderly exit, nothing to release)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        _LOG.info("signal while standing by: exiting", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


@contextlib.contextmanager
def leader(elector: LeaderElector, *, liveness: str | None) -> Iterator[bool]:
    """Stand by until ``elector`` holds its Lease; yield True to run as the leader (False: stopped first).

    The Lease is renewed for as long as the block runs and released after it,
    also when it raises.
    """
    stop = threading.Event()
    _LOG.info(
        "leader election: standing by until this replica holds the lease",
        lease=elector.name, namespace=elector.namespace, identity=elector.identity,
        lease_duration=elector.timing.lease_duration, renew_deadline=elector.timing.renew_deadline,
        retry_period=elector.timing.retry_period,
    )  # fmt: skip
    with standby_liveness(liveness), _stop_on_signals(stop):
        acquired = elector.acquire(stop)
    if not acquired:
        yield False
        return
    elector.start_renewing()
    try:
        yield True
    finally:
        elector.release()


def drain(memo: Any) -> None:  # noqa: ANN401 - kopf's Memo carries what the handlers put in it
    """Wait for the reconciles still running in the operator's own threads (kopf has stopped)."""
    pools = getattr(memo, "pools", None)
    for name in ("reconcile", "webhook"):
        executor = getattr(pools, name, None)
        if executor is not None:
            executor.shutdown(wait=True)
