"""The operator as a process (`gitward run`), and a world for it: tenant, keys, app, HTTPS git server."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Self

from kubernetes import client

from gitward.api import resources
from gitward.api.refs import ObjectRef
from gitward.history.store import list_records
from gitward.kube.objects import Objects
from gitward.source.urls import parse
from gitward.webhook import route_path, route_token
from support.gitservers import HttpsGitServer, free_port
from support.kube import gitward_connection
from support.signing import SshIdentity, WorkRepo
from support.toolpaths import kubectl_binary, sops_binary
from support.waiting import wait_until


class OperatorProcess:
    """`gitward run` against the test cluster; stopped on exit, also when a test fails."""

    def __init__(
        self, kubeconfig: Path, operator_namespace: str, cache_dir: Path, log: Path, *extra_args: str
    ) -> None:
        self.kubeconfig = kubeconfig
        self.operator_namespace = operator_namespace
        self.cache_dir = cache_dir
        self.log = log
        self.extra_args = extra_args
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_serving: bool = True) -> OperatorProcess:
        """Start `gitward run` and wait until its webhook server answers (unless ``wait_serving`` is False).

        A `--leader-elect` replica that stands by serves nothing until it holds its Lease.
        """
        gitward = Path(sys.executable).parent / "gitward"
        argv = [
            str(gitward), "run", "--kubeconfig", str(self.kubeconfig),
            "--operator-namespace", self.operator_namespace, "--cache-dir", str(self.cache_dir),
            "--webhook-host", "127.0.0.1", "--webhook-port", str(self.port), "--liveness", "",
            "--kustomize", f"{kubectl_binary()} kustomize", "--sops", sops_binary(), *self.extra_args,
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        if not wait_serving:
            return self
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gitward run exited:\n{self.log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("gitward run did not come up")

    def serving(self) -> bool:
        """Whether the webhook server (run only by an operator that reconciles) answers /healthz."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def webhook(self, path: str, body: bytes, secret: bytes | None) -> int:
        """POST a GitHub-style push to ``path`` (a route, ``World.webhook_path``), signed with ``secret``."""
        # Every delivery has its own id, as GitHub sends it; the operator ignores a replayed one.
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
        }
        if secret is not None:
            headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback http only
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            return str(response.read().decode())


WEBHOOK_SECRET = b"e2e-webhook-secret"


class World:
    """A tenant with a signing key, an app namespace, and the app's repository on an HTTPS server."""

    def __init__(
        self, root: Path, admin: client.ApiClient, server: HttpsGitServer, operator_namespace: str
    ) -> None:
        self.admin = admin
        self.objects = Objects(gitward_connection(admin))
        self.server = server
        self.operator_namespace = operator_namespace
        self.id = uuid.uuid4().hex[:8]
        self.namespace = f"e2e-{self.id}"
        self.tenant = f"tenant-{self.id}"
        self.signer = SshIdentity.create(root / f"keys-{self.id}", "signer")
        self.work = WorkRepo.create(root / f"work-{self.id}")
        self.repo_name = f"team/{self.id}.git"
        self.work.bare_remote("origin", server.root / self.repo_name)
        core = client.CoreV1Api(admin)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace)))
        core.create_namespaced_config_map(
            operator_namespace,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"keys-{self.id}"),
                data={"allowed_signers": self.signer.allowed_signers_line()},
            ),
        )
        secret = {
            "username": server.username,
            "password": server.password,
            "ca.crt": server.ca_cert.read_text(),
        }
        for name, data in (("git", secret), ("hook", {"token": WEBHOOK_SECRET.decode()})):
            core.create_namespaced_secret(
                self.namespace,
                client.V1Secret(
                    metadata=client.V1ObjectMeta(name=name),
                    data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
                ),
            )
        client.CustomObjectsApi(admin).create_cluster_custom_object(
            resources.GROUP, resources.VERSION, "gitopstenants",
            {
                "apiVersion": resources.API_VERSION, "kind": "GitOpsTenant", "metadata": {"name": self.tenant},
                "spec": {
                    "namespaces": [self.namespace],
                    "sources": [{"url": server.url("team/*"), "branches": ["main"]}],
                    "trust": {"keysFrom": [{"configMapRef": {"name": f"keys-{self.id}"}}]},
                },
            },
        )  # fmt: skip

    def create_app(self, name: str = "web", *, labels: dict[str, str] | None = None, **spec: Any) -> None:
        body = {
            "apiVersion": resources.API_VERSION,
            "kind": "GitOpsApp",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels or {}},
            "spec": {
                "tenant": self.tenant,
                "source": {
                    "url": spec.pop("url", self.source_url),
                    "branch": "main",
                    "path": spec.pop("path", "deploy"),
                    "interval": spec.pop("interval", "10s"),
                    "secretRef": {"name": "git"},
                },
                "webhook": {"secretRef": {"name": "hook"}},
                **spec,
            },
        }
        client.CustomObjectsApi(self.admin).create_namespaced_custom_object(
            resources.GROUP, resources.VERSION, self.namespace, "gitopsapps", body
        )

    @property
    def source_url(self) -> str:
        return self.server.url(self.repo_name)

    @property
    def webhook_path(self) -> str:
        """The webhook route of every app of this world: one per repository and secret, not per app."""
        return route_path(route_token(WEBHOOK_SECRET, parse(self.source_url).identity))

    def patch_app(self, spec: dict[str, Any]) -> None:
        self.objects.merge_patch(self.app_ref, {"spec": spec})

    @property
    def app_ref(self) -> ObjectRef:
        return self.ref_of("web")

    def ref_of(self, name: str) -> ObjectRef:
        return ObjectRef(resources.GROUP, resources.VERSION, "GitOpsApp", self.namespace, name)

    def app(self, name: str = "web") -> dict[str, Any]:
        body = self.objects.get(self.ref_of(name))
        assert body is not None
        return body

    def status(self, name: str = "web") -> dict[str, Any]:
        return dict(self.app(name).get("status") or {})

    def ready(self) -> dict[str, Any]:
        for condition in self.status().get("conditions") or ():
            if condition["type"] == "Ready":
                return dict(condition)
        return {}

    def records(self) -> list[dict[str, Any]]:
        return list_records(self.objects, self.namespace, "web")

    def configmap(self, name: str) -> dict[str, str] | None:
        body = self.objects.get(ObjectRef("", "v1", "ConfigMap", self.namespace, name))
        return None if body is None else dict(body.get("data") or {})

    def patch_tenant(self, spec: dict[str, Any]) -> None:
        client.CustomObjectsApi(self.admin).patch_cluster_custom_object(
            resources.GROUP, resources.VERSION, "gitopstenants", self.tenant, {"spec": spec}
        )

    def cleanup(self) -> None:
        custom = client.CustomObjectsApi(self.admin)
        for call in (
            lambda: custom.delete_cluster_custom_object(
                resources.GROUP, resources.VERSION, "gitopstenants", self.tenant
            ),
            lambda: client.CoreV1Api(self.admin).delete_namespace(self.namespace),
        ):
            with contextlib.suppress(client.ApiException):
                call()


def remove(world: World) -> None:
    """Take the app's finalizer off (the operator that owned it may be gone), then delete the world."""
    with contextlib.suppress(client.ApiException):
        client.CustomObjectsApi(world.admin).patch_namespaced_custom_object(
            resources.GROUP, resources.VERSION, world.namespace, "gitopsapps", "web",
            {"metadata": {"finalizers": None}},
        )  # fmt: skip
    world.cleanup()


def push_payload(world: World, commit: str) -> bytes:
    """A GitHub-style push event: only "look now"; gitward never trusts its content."""
    return json.dumps({"ref": "refs/heads/main", "after": commit, "repository": {"name": world.id}}).encode()


def applied(world: World, commit: str, timeout: float = 60, name: str = "web") -> None:
    """Wait until the app's status says ``commit`` is applied."""
    wait_until(
        lambda: world.status(name).get("lastAppliedRevision") == commit,
        timeout=timeout,
        what=f"{world.namespace}/{name} at {commit[:12]}",
    )
