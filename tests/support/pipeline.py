"""A whole-pipeline harness: a signed repository, a tenant, and gitward deploying into a real namespace.

The tenant and its keys are handed to ``tenants.resolve`` through a small
in-memory reader (the real reader is tested against the API server in
test_source_pipeline.py); everything else is real: git, ssh-keygen, the
API server, RBAC, impersonation, admission and kwok.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.apply.run import ApplyResult, HealthWaiter
from gitward.errors import Stalled
from gitward.kube import clients
from gitward.kube.config import Configuration
from gitward.kube.http import Connection
from gitward.kube.objects import Objects
from gitward.reconcile.state import Run, Services
from gitward.reconcile.status import Step
from gitward.reconcile.steps import run_steps
from gitward.render.limits import Limits
from gitward.render.manifests import Manifest
from gitward.source import git
from support.signing import SshIdentity, WorkRepo
from support.toolpaths import kubectl_binary

RESTRICTED_POD: dict[str, Any] = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "containers": [
        {
            "name": "app",
            "image": "example.invalid/app:1",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
    ],
}


def configmap(name: str, **data: str) -> str:
    body = "".join(f"  {k}: {v!r}\n" for k, v in (data or {"key": "value"}).items())
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n{body}"


def deployment(name: str, *, replicas: int = 1, pod_annotations: Mapping[str, str] | None = None) -> str:
    pod = copy.deepcopy(RESTRICTED_POD)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": dict(pod_annotations or {})},
                "spec": pod,
            },
        },
    }
    return yaml.safe_dump(body)


class _Reader:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def tenant(self, name: str) -> Mapping[str, Any]:
        if name != self.harness.tenant_name:
            raise Stalled(Reason.TENANT_NOT_FOUND, f"GitOpsTenant {name!r} does not exist")
        return {"metadata": {"name": name}, "spec": self.harness.tenant_spec}

    def key_config_map(self, name: str) -> Mapping[str, str]:  # noqa: ARG002 - one key set for any name
        return {"allowed_signers": self.harness.signer.allowed_signers_line()}

    def secret_data(self, namespace: str, name: str) -> Mapping[str, bytes]:  # noqa: ARG002
        raise Stalled(Reason.FETCH_FAILED, "no secrets in this harness")


@dataclass(frozen=True)
class Deployed:
    """A run through the steps, and the health failure if the commit was applied but never became healthy."""

    run: Run
    unhealthy: Stalled | None

    @property
    def result(self) -> ApplyResult:
        assert self.run.result is not None
        return self.run.result

    @property
    def manifests(self) -> tuple[Manifest, ...]:
        assert self.run.rendered is not None
        return self.run.rendered.manifests


class Harness:
    """One tenant namespace, one app, one signed repository."""

    def __init__(
        self,
        root: Path,
        *,
        api: Connection,
        configuration: Configuration,
        namespace: str,
        policy: Mapping[str, Any] | None = None,
        isolation: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.namespace = namespace
        self.tenant_name = f"tenant-{namespace}"
        self.signer = SshIdentity.create(root / "keys", "signer")
        self.work = WorkRepo.create(root / "work")
        self.bare = self.work.bare_remote("origin", root / "remote.git")
        self.tenant_spec: dict[str, Any] = {
            "namespaces": [namespace],
            "sources": [{"url": f"file://{self.bare}", "branches": ["main"]}],
            "trust": {"keysFrom": [{"configMapRef": {"name": "keys"}}]},
            "policy": dict(policy or {}),
            "isolation": dict(
                isolation
                if isolation is not None
                else {
                    "networkPolicy": "default-deny",
                    "resourceQuota": {"hard": {"pods": "20", "configmaps": "200"}},
                    "limitRange": {
                        "limits": [{"type": "Container", "default": {"cpu": "100m", "memory": "64Mi"}}]
                    },
                }
            ),
        }
        self.options = git.FetchOptions(cache_root=root / "cache", allow_file_transport=True, timeout=30)
        self.operator = Objects(api)
        self.configuration = configuration
        self.last_applied: str | None = None
        self.inventory: tuple[ObjectRef, ...] = ()
        self.app_spec: dict[str, Any] = {"healthTimeout": "60s"}

    def as_tenant(self, namespace: str, account: str) -> Objects:
        return Objects(
            clients.impersonating(self.configuration, clients.ServiceAccountRef(namespace, account))
        )

    def app(self) -> dict[str, Any]:
        return {
            "apiVersion": "gitward.dev/v1alpha1",
            "kind": "GitOpsApp",
            "metadata": {"name": "web", "namespace": self.namespace, "uid": f"uid-{self.namespace}"},
            "spec": {
                "tenant": self.tenant_name,
                "source": {"url": f"file://{self.bare}", "branch": "main", "path": "deploy"},
                **self.app_spec,
            },
        }

    def push(
        self,
        files: Mapping[str, str],
        *,
        remove: tuple[str, ...] = (),
        symlinks: Mapping[str, str] | None = None,
    ) -> str:
        for path in remove:
            self.work.git("rm", "-q", "-r", "--ignore-unmatch", path)
        for link, target in (symlinks or {}).items():
            full = self.work.path / link
            full.parent.mkdir(parents=True, exist_ok=True)
            full.symlink_to(target)
            self.work.git("add", link)
        commit = self.work.commit(dict(files), message="change", sign=self.signer)
        self.work.push()
        return commit

    def deploy(
        self,
        *,
        wait: bool = True,
        limits: Limits | None = None,
        operator_account: clients.ServiceAccountRef | None = None,
        health: HealthWaiter | None = None,
        fences: dict[str, str] | None = None,
    ) -> Deployed:
        """Run the operator's own steps (gitward.reconcile.steps) from resolve to health, as the operator does."""
        services = Services(
            reader=_Reader(self),
            operator=self.operator,
            as_tenant=self.as_tenant,
            fetch_options=self.options,
            kustomize_command=(kubectl_binary(), "kustomize"),
            operator_account=operator_account,
            health=health,
            fences=fences,
        )
        status = {
            "inventory": [ref.to_inventory() for ref in self.inventory],
        }
        run = Run(
            app={**self.app(), "status": status},
            services=services,
            limits=limits,
            baseline=self.last_applied or "",
        )
        unhealthy = None
        try:
            run_steps(run, stop_after=Step.HEALTH if wait else Step.APPLY)
        except Stalled as error:
            if run.step is not Step.HEALTH:
                raise
            unhealthy = error
        assert run.verified is not None
        assert run.result is not None
        self.last_applied = run.verified.commit
        self.inventory = run.result.inventory
        return Deployed(run, unhealthy)


SNAPSHOT_KINDS = (
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("v1", "Pod"),
    ("v1", "ResourceQuota"),
    ("v1", "LimitRange"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "Job"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


def snapshot(objects: Objects, namespace: str) -> set[tuple[str, str, str]]:
    """Every object of the usual kinds in a namespace, with its resourceVersion."""
    found = set()
    for api_version, kind in SNAPSHOT_KINDS:
        for item in objects.list(api_version, kind, namespace):
            metadata = item["metadata"]
            found.add((kind, metadata["name"], metadata["resourceVersion"]))
    return found
