"""Small helpers for reading the Kubernetes API server's answers in tests."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from kubernetes import client
from kubernetes import watch as kube_watch
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from gitward.api import resources
from gitward.kube import clients
from gitward.kube.config import Configuration, Credential, StaticCredentials
from gitward.kube.http import Connection
from gitward.kube.leases import Record
from support.paths import CLUSTER


def api_error_message(error: ApiException) -> str:
    """The API server's own message from an error response."""
    try:
        return str(json.loads(error.body).get("message", error.body))
    except (TypeError, ValueError):
        return str(error.body)


def gitward_connection(admin: client.ApiClient) -> Connection:
    """gitward's own client for the server and identity of a ``kubernetes`` client (the harness's admin)."""
    configuration = admin.configuration
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    token = (header or "").rpartition(" ")[2] or None
    return clients.api_client(
        Configuration(
            host=configuration.host,
            ca_path=configuration.ssl_ca_cert,
            insecure=not configuration.verify_ssl,
            certificate_path=configuration.cert_file,
            private_key_path=configuration.key_file,
            credentials=StaticCredentials(Credential(token=token)),
        )
    )


@contextlib.contextmanager
def temporary_namespace(admin: client.ApiClient, prefix: str = "t") -> Iterator[str]:
    """A fresh namespace, deleted afterwards (also when the test fails)."""
    core = client.CoreV1Api(admin)
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)


@contextlib.contextmanager
def benchmark_cluster() -> Iterator[str]:
    """$KUBECONFIG if set; else a local control plane from hack/cluster, started and stopped around the block."""
    if os.environ.get("KUBECONFIG"):
        yield os.environ["KUBECONFIG"]
        return
    with tempfile.TemporaryDirectory(prefix="gitward-bench-cluster-") as state:
        cli = [sys.executable, str(CLUSTER)]
        subprocess.run([*cli, "up", "--state-dir", state], check=True, stdout=subprocess.DEVNULL)
        try:
            yield str(Path(state) / "admin.kubeconfig")
        finally:
            subprocess.run([*cli, "down", "--state-dir", state], check=False, capture_output=True)


def read_lease(admin: client.ApiClient, namespace: str, name: str) -> Record | None:
    """A Lease as gitward's elector reads it, or None if there is none."""
    try:
        body = client.CoordinationV1Api(admin).read_namespaced_lease(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return Record.of(admin.sanitize_for_serialization(body))


def hack_cluster(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``hack/cluster`` with these arguments (it prints its progress on stderr)."""
    return subprocess.run(
        [sys.executable, str(CLUSTER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class Outage:
    """A kube-apiserver stopped by :func:`api_server_stopped`: where it listened, and since when it is down."""

    host: str
    port: int
    since: float  # time.monotonic() once it was stopped
    since_wall: datetime

    def refused(self) -> bool:
        """Whether its port refuses connections right now (nothing listens there: the API server is down)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=2):
                return False
        except ConnectionRefusedError:
            return True


@contextlib.contextmanager
def api_server_stopped(state: Path) -> Iterator[Outage]:
    """Stop the kube-apiserver of the hack/cluster cluster in ``state``; start it again on every exit.

    Only the API server stops (etcd, the controllers and kwok keep running, as in a real outage of
    the control plane's front door). It is started again with the same flags and port, also when
    the block raises, and the block is left only once it answers /readyz.
    """
    server = urlsplit(json.loads((state / "cluster.json").read_text())["server"])
    assert server.hostname is not None
    assert server.port is not None
    try:
        stopped = hack_cluster("stop-apiserver", "--state-dir", state)
        if stopped.returncode != 0:
            raise RuntimeError(f"hack/cluster stop-apiserver failed:\n{stopped.stderr[-4000:]}")
        yield Outage(server.hostname, server.port, time.monotonic(), datetime.now(UTC))
    finally:
        started = hack_cluster("start-apiserver", "--state-dir", state)
        if started.returncode != 0:
            raise RuntimeError(f"hack/cluster start-apiserver failed:\n{started.stderr[-4000:]}")


class ReadyHistory:
    """Every Ready condition one GitOpsApp had, in order, as list+watch from the test saw them.

    A thread lists the app, then watches it from that list's resourceVersion. When the watch breaks
    (the API server went away) it lists again as soon as the API server answers: a restarted API
    server cannot resume a watch from before its restart ("410 Gone"), so the states written
    before that list are not seen. A test that needs every state the operator wrote after an outage
    waits for :meth:`listed_since` before the operator acts (see ``paused``).
    """

    def __init__(self, admin: client.ApiClient, namespace: str, name: str = "web") -> None:
        configuration = copy.copy(admin.configuration)
        configuration.retries = 0  # this thread retries itself, without urllib3's warnings
        self._client = client.ApiClient(configuration)  # its own connections, for its own thread
        self.api = client.CustomObjectsApi(self._client)
        self.namespace = namespace
        self.name = name
        self.seen: list[tuple[float, dict[str, Any]]] = []  # (time.monotonic(), the Ready condition)
        self.listed_at = float("-inf")  # time.monotonic() of the last list that succeeded
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ready-history-{namespace}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=40)
        self._client.close()

    def readies(self, since: float = float("-inf")) -> list[dict[str, Any]]:
        """The Ready conditions first seen at or after ``since`` (monotonic), in order, repeats folded."""
        with self._lock:
            return [ready for at, ready in self.seen if at >= since]

    def listed_since(self, moment: float) -> bool:
        """Whether the app was listed (and is watched from there) after ``moment`` (monotonic)."""
        with self._lock:
            return self.listed_at > moment

    def _note(self, app: dict[str, Any]) -> None:
        for condition in (app.get("status") or {}).get("conditions") or ():
            if condition.get("type") == "Ready":
                with self._lock:
                    if not self.seen or self.seen[-1][1] != condition:
                        self.seen.append((time.monotonic(), dict(condition)))

    def _run(self) -> None:
        args = (resources.GROUP, resources.VERSION, self.namespace, resources.APP.plural)
        selector = f"metadata.name={self.name}"
        while not self._stopping.is_set():
            try:
                listing = self.api.list_namespaced_custom_object(
                    *args, field_selector=selector, _request_timeout=(2, 10)
                )
                version = listing["metadata"]["resourceVersion"]
                for item in listing.get("items") or ():
                    self._note(item)
                with self._lock:
                    self.listed_at = time.monotonic()
                while not self._stopping.is_set():
                    stream = kube_watch.Watch().stream(
                        self.api.list_namespaced_custom_object, *args, field_selector=selector,
                        resource_version=version, timeout_seconds=10, allow_watch_bookmarks=True,
                        _request_timeout=(2, 20),
                    )  # fmt: skip
                    for event in stream:
                        body = event["object"]
                        version = str((body.get("metadata") or {}).get("resourceVersion") or version)
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self._note(body)
            except (ApiException, OSError, HTTPError, ValueError):  # gone, or not there: list again
                self._stopping.wait(0.2)


@contextlib.contextmanager
def paused(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGSTOP a process group (a process started in its own session) for the block; SIGCONT on every exit."""
    os.killpg(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGCONT)
